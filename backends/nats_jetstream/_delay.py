"""Delayed publish, emulated durably on JetStream 2.9 (which cannot schedule).

``publish(delay=d)`` stores the message, confirmed, in the holding stream
``<stream_prefix>-DELAYED`` on subject ``<subject_prefix>._delay.<topic>`` with a
``bus-due`` header (UNIX time, publisher's clock). Every connected bus process
that subscribes or publishes with a delay runs a *mover*: a member of the one
durable pull consumer ``mover`` of that stream. For each held message the mover
either republishes it to its topic (confirmed, same ``Nats-Msg-Id``) and acks
it, or, when not yet due, naks it with the remaining time as delay, so the
server itself hands it back when due. Nothing is held in process memory.

If a process dies:

* before the holding publish was confirmed: ``publish`` raised, nothing was
  promised;
* while its mover holds messages: they are handed to another mover after the
  mover consumer's ack wait (10 s), or when their nak delay expires;
* after republishing but before acking: another mover republishes again; the
  topic stream's duplicate window (``duplicate_window``) drops the copy, so a
  duplicate is only possible when the ack is lost for longer than the window;
* if no bus process is running at all, delayed messages wait in the holding
  stream (late, never lost) until one connects.

A delayed message is delivered no earlier than its due time; it is late by the
mover's reaction time (milliseconds when a mover runs) plus clock skew between
the publisher and the mover.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from backends.nats_jetstream._api import ns
from backends.nats_jetstream._pull import Puller
from bus.errors import BusError

if TYPE_CHECKING:
    from backends.nats_jetstream._backend import NatsJetStreamBackend

__all__ = ["DUE", "DelayMover"]

log = logging.getLogger(__name__)

#: Header of a held message: when it is due (UNIX seconds, float).
DUE = "bus-due"
#: Ack wait of the mover consumer: a dead mover's messages move on after this.
MOVER_ACK_WAIT = 10.0
_BATCH = 256


class DelayMover:
    """One member of the shared ``mover`` consumer, running in the background."""

    def __init__(self, backend: NatsJetStreamBackend) -> None:
        self._backend = backend
        self._puller: Puller | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        backend = self._backend
        await backend.ensure_delay_stream()
        consumer = await self._ensure_consumer()
        self._puller = Puller(
            backend.nc,
            backend.api,
            backend.names.delay_stream,
            consumer,
            recover=self._recover,
        )
        await self._puller.start()
        self._task = asyncio.create_task(self._run(self._puller), name="bus-nats-delay-mover")

    async def _recover(self) -> str:
        await self._backend.ensure_delay_stream(force=True)
        return await self._ensure_consumer(force=True)

    async def _ensure_consumer(self, *, force: bool = False) -> str:
        backend = self._backend
        names = backend.names
        config = {
            "durable_name": names.delay_consumer,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": ns(MOVER_ACK_WAIT),
            "max_deliver": -1,
            "max_ack_pending": -1,
            "filter_subject": f"{names.delay_root}.>",
            "replay_policy": "instant",
        }
        await backend.ensure_durable(names.delay_stream, config, update_lease=False, force=force)
        return names.delay_consumer

    async def _run(self, puller: Puller) -> None:
        while not puller.closed:
            try:
                batch = await puller.next(_BATCH, 1.0)
                if batch:
                    await asyncio.gather(*(self._move(msg) for msg in batch))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("delay mover failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)

    async def _move(self, msg: Msg) -> None:
        backend = self._backend
        nc = backend.nc
        headers = dict(msg.headers or {})
        try:
            due = float(headers.pop(DUE, "0"))
        except ValueError:
            due = 0.0
        wait = due - time.time()
        if wait > 0.001:
            body = b"-NAK " + json.dumps({"delay": ns(wait)}).encode()
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(msg.reply, body)
            return
        topic = backend.names.delayed_topic(msg.subject)
        try:
            await backend.publish_raw(topic, [(headers, msg.data)])
        except BusError:
            log.warning("moving a delayed message to %r failed; will retry", topic, exc_info=True)
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(msg.reply, b"-NAK " + json.dumps({"delay": ns(1.0)}).encode())
            return
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(msg.reply, b"+ACK")

    def reset(self) -> None:
        """After a reconnect: the open pull request went with the old link."""
        if self._puller is not None:
            self._puller.reset()

    async def close(self) -> None:
        puller, self._puller = self._puller, None
        if puller is not None:
            leftover = await puller.close(2.0)
            if leftover:
                await puller.purge_requests(2.0)
            for msg in leftover:
                with contextlib.suppress(nats.errors.Error):
                    await self._backend.nc.publish(msg.reply, b"-NAK")
        task, self._task = self._task, None
        if task is not None:
            # let moves in progress finish (their messages are acked), then stop
            _, pending = await asyncio.wait({task}, timeout=5.0)
            for running in pending:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running


def held_headers(headers: dict[str, str], due: float) -> dict[str, str]:
    """``headers`` of a message to hold until ``due``."""
    return {**headers, DUE: f"{due:.6f}"}
