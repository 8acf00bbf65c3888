"""One consumer: a group member (durable pull consumer) or a broadcast subscriber
(ephemeral pull consumer), with explicit, coalesced settlement.

Settlements are plain publishes to the delivery's ``$JS.ACK`` reply subject
(``+ACK``, ``-NAK``, ``-NAK {"delay": ns}``, ``+WPI``, ``+TERM``); nats-py buffers
them and its flusher writes many per syscall, so an ack is never a round trip.
They travel in order on the one connection, ahead of anything sent later.

``close`` of a group member drains its inbox, has the server sweep its pull
requests (see ``_pull``), gives back (``-NAK``) every delivery it handed out and
did not see settled plus the ones still buffered, and flushes, so another member
gets them at once. A broadcast subscriber's ephemeral consumer is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from backends.nats_jetstream import _wire
from backends.nats_jetstream._api import ns
from backends.nats_jetstream._pull import Puller
from bus.backend import BackendSubscription
from bus.delivery import Delivery
from bus.errors import BrokerUnavailable, BusClosed
from bus.topics import dlq_topic

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription

    from backends.nats_jetstream._backend import NatsJetStreamBackend

__all__ = ["NatsSubscription"]

log = logging.getLogger(__name__)

_ACK = b"+ACK"
_NAK = b"-NAK"
_PROGRESS = b"+WPI"
_TERM = b"+TERM"


class NatsSubscription(BackendSubscription):
    backend: NatsJetStreamBackend

    def __init__(
        self,
        backend: NatsJetStreamBackend,
        topic: str,
        group: str | None,
        stream: str,
        puller: Puller,
        next_seq: int,
    ) -> None:
        super().__init__(backend, topic, group)
        self.stream = stream
        self.puller = puller
        #: Broadcast: the stream sequence to resume from if the server drops the
        #: ephemeral consumer (restart), so nothing published while open is missed.
        self.next_seq = next_seq
        self._unsettled: dict[str, Delivery] = {}
        self._live: Subscription | None = None
        self._closed = False

    async def start(self) -> None:
        """Subscribe the inbox and the liveness subject, and make sure the server
        has both before ``subscribe()`` returns."""
        nc = self.backend.nc
        await self.puller.start()
        self._live = await nc.subscribe(
            self.backend.names.live_subject(self.topic), queue="live", cb=self._on_probe
        )
        await nc.flush(timeout=max(1, int(self.backend.options.operation_timeout)))

    async def _on_probe(self, msg: Msg) -> None:
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await self.backend.nc.publish(msg.reply, b"")

    # -- receiving -------------------------------------------------------------
    async def fetch(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        if self._closed:
            return ()
        msgs = await self.puller.next(max_messages, timeout)
        if self._closed:
            # close() ran while we waited: give these back too
            await self.puller.purge_requests(5.0)
            await self._give_back(msgs)
            return ()
        out: list[Delivery] = []
        names = self.backend.names
        for msg in msgs:
            meta = _wire.ack_meta(msg.reply)
            attempt, seq = (meta.delivered, meta.stream_seq) if meta else (1, 0)
            message = _wire.delivered(
                names.topic(msg.subject), msg.data, msg.headers, f"{self.stream}:{seq}"
            )
            if seq >= self.next_seq:
                self.next_seq = seq + 1
            delivery = Delivery(self, message, attempt, msg.reply)
            self._unsettled[msg.reply] = delivery
            out.append(delivery)
        return out

    # -- settling --------------------------------------------------------------
    async def _send(self, reply: str, body: bytes) -> None:
        try:
            await self.backend.nc.publish(reply, body)
        except nats.errors.ConnectionClosedError as exc:
            raise BusClosed("the NATS connection is closed") from exc
        except nats.errors.Error as exc:
            raise BrokerUnavailable(
                f"cannot settle with {self.backend.redacted}: {type(exc).__name__}"
            ) from exc

    def _take(self, delivery: Delivery) -> str | None:
        reply: str = delivery.handle
        if self._unsettled.pop(reply, None) is None:
            return None  # already given back by close()
        return reply

    async def ack(self, delivery: Delivery) -> None:
        reply = self._take(delivery)
        if reply is not None:
            await self._send(reply, _ACK)

    async def nack(self, delivery: Delivery, delay: float | None) -> None:
        reply = self._take(delivery)
        if reply is None:
            return
        body = _NAK
        if delay:
            body = _NAK + b" " + json.dumps({"delay": ns(delay)}).encode()
        await self._send(reply, body)

    async def in_progress(self, delivery: Delivery) -> None:
        reply: str = delivery.handle
        if reply in self._unsettled:
            await self._send(reply, _PROGRESS)

    async def dead_letter(self, delivery: Delivery, headers: Mapping[str, str]) -> None:
        """Publish a copy to ``<topic>.dlq`` (confirmed), then ``+TERM`` the original
        so the server never delivers it to this group again. A crash between the
        two delivers the original again (the copy may then be duplicated)."""
        original = delivery.message
        dead = original.evolve(
            topic=dlq_topic(original.topic), headers={**original.headers, **headers}
        )
        await self.backend.publish([dead])
        reply = self._take(delivery)
        if reply is not None:
            await self._send(reply, _TERM)

    # -- closing ---------------------------------------------------------------
    async def _give_back(self, msgs: Sequence[Msg]) -> None:
        for msg in msgs:
            if msg.reply:
                with contextlib.suppress(nats.errors.Error):
                    await self.backend.nc.publish(msg.reply, _NAK)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        backend = self.backend
        timeout = min(5.0, backend.options.operation_timeout)
        live, self._live = self._live, None
        if live is not None:
            with contextlib.suppress(nats.errors.Error):
                await live.unsubscribe()
        leftover = await self.puller.close(timeout)
        if self.group is None:
            # the ephemeral consumer goes away with everything it holds
            await backend.drop_ephemeral(self.stream, self.puller.consumer)
        else:
            held = [*self._unsettled, *(m.reply for m in leftover if m.reply)]
            self._unsettled.clear()
            if held:
                await self.puller.purge_requests(timeout)
                with contextlib.suppress(nats.errors.Error):
                    for reply in held:
                        await backend.nc.publish(reply, _NAK)
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                if backend.nc.is_connected:  # settlements reach the server now
                    await backend.nc.flush(timeout=max(1, int(timeout)))
        self._unsettled.clear()
        backend.forget(self)
