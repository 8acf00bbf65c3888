"""Pulling from one JetStream consumer on a private inbox.

A pull request (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``) asks for up to
``batch`` messages; the server sends them to our inbox as they become available,
idle heartbeats (``100``) while it waits, and a ``408`` status when the request
expires. Requests are long (30 s) and renewed 10 s before they expire while the
consumer keeps fetching, so an idle subscriber costs one request per 20 s, and a
waiting consumer always has a valid request queued.

That last point matters on NATS 2.9: when the server takes a *redelivery* and
then finds no valid waiting request (only expired ones, or ones whose inbox is
gone), it drops the redelivery until the next ack wait and delivers the newest
message a second time (``o.sseq--`` in ``loopAndGatherMsgs``). Keeping a valid
request queued, and purging our own dead requests before giving deliveries back
on close (:meth:`Puller.purge_requests`), keeps redeliveries prompt.

Status messages (no reply subject) are told apart from deliveries (``$JS.ACK``
reply subject). ``503`` / ``409 Consumer Deleted`` mean the consumer is gone
(server restart with an ephemeral consumer, or someone deleted it), which
``recover`` repairs; ``409 Leadership Change`` / ``Server Shutdown`` end every
open request. No heartbeat for three intervals also counts as lost (a request
can vanish silently across a reconnect), so a new one is sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from backends.nats_jetstream._api import JetStreamApi, ns

__all__ = ["Puller"]

log = logging.getLogger(__name__)

_EXPIRES = 30.0
_HEARTBEAT = 5.0
# Renew a request this long before it expires (while the consumer is fetching).
_RENEW = 10.0
# No message or heartbeat for this long while a request is open: it is gone.
_STALE = 3 * _HEARTBEAT
_RETRY = 0.5

Recover = Callable[[], Awaitable[str]]


class Puller:
    """Deliveries of one consumer, pulled on demand into a local buffer."""

    def __init__(
        self,
        nc: Client,
        api: JetStreamApi,
        stream: str,
        consumer: str,
        recover: Recover | None = None,
    ) -> None:
        self._nc = nc
        self._api = api
        self.stream = stream
        self.consumer = consumer
        #: Called when the consumer is gone; returns the (new) consumer name.
        self.recover = recover
        self.inbox = nc.new_inbox()
        self.buffer: collections.deque[Msg] = collections.deque()
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        # messages still asked for by open requests, and when the newest expires
        self._outstanding = 0
        self._expires_at = 0.0
        self._last_seen = 0.0
        self._retry_at = 0.0
        self._missing = False
        self.closed = False

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.inbox, cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        loop = asyncio.get_running_loop()
        self._last_seen = loop.time()
        if msg.reply:
            self.buffer.append(msg)
            if self._outstanding > 0:
                self._outstanding -= 1
            self._wake.set()
            return
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat: the request is alive
            return
        if status == "408":  # one request expired: what it still wanted is off
            try:
                left = int(headers.get("Nats-Pending-Messages", "0"))
            except ValueError:
                left = self._outstanding
            self._outstanding = max(self._outstanding - left, 0)
        else:
            self._outstanding = 0
            description = headers.get("Description", "")
            if status == "503" or "Deleted" in description:
                self._missing = True
            elif "Exceeded" in description:  # MaxWaiting / MaxRequestBatch
                self._retry_at = loop.time() + _RETRY
            log.debug("pulls on %s ended: %s %s", self.consumer, status, description)
        self._wake.set()

    def reset(self) -> None:
        """Forget the open requests (after a reconnect they went with the old link)."""
        self._outstanding = 0
        self._wake.set()

    def _take(self, max_messages: int) -> list[Msg]:
        out: list[Msg] = []
        buffer = self.buffer
        while buffer and len(out) < max_messages:
            out.append(buffer.popleft())
        return out

    async def next(self, max_messages: int, timeout: float) -> list[Msg]:
        """Up to ``max_messages`` deliveries; [] after ``timeout`` or once closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            self._wake.clear()
            if self.buffer:
                return self._take(max_messages)
            now = loop.time()
            remaining = deadline - now
            if remaining <= 0:
                break
            wait = remaining
            if now < self._retry_at:
                wait = min(wait, self._retry_at - now)
            elif self._missing and self.recover is not None:
                await self._repair(now)
                continue
            elif self._outstanding > 0 and now - self._last_seen > _STALE:
                log.debug("pull on %s went silent; sending another", self.consumer)
                self._outstanding = 0
                continue
            elif self._outstanding <= 0 or now >= self._expires_at - _RENEW:
                await self._pull(max_messages)
                continue
            else:
                wait = min(wait, self._expires_at - _RENEW - now, self._last_seen + _STALE - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.001)):
                    await self._wake.wait()
        return []

    async def _repair(self, now: float) -> None:
        assert self.recover is not None
        try:
            self.consumer = await self.recover()
        except Exception:  # retried: the fetch loop must go on
            log.debug("recovering consumer %s failed; will retry", self.consumer, exc_info=True)
            self._retry_at = now + _RETRY
            return
        self._missing = False
        self._outstanding = 0

    async def _pull(self, batch: int) -> None:
        loop = asyncio.get_running_loop()
        body = json.dumps(
            {"batch": batch, "expires": ns(_EXPIRES), "idle_heartbeat": ns(_HEARTBEAT)}
        ).encode()
        try:
            await self._nc.publish(
                self._api.next_subject(self.stream, self.consumer), body, reply=self.inbox
            )
        except nats.errors.Error:
            # disconnected with a full buffer, or closing: try again shortly
            self._retry_at = loop.time() + _RETRY
            return
        now = loop.time()
        self._outstanding += batch
        self._expires_at = now + _EXPIRES
        self._last_seen = now

    async def close(self, timeout: float) -> list[Msg]:
        """Stop pulling; return what arrived but was never handed out.

        The inbox is drained (unsubscribe, then a round trip), so deliveries the
        server sent before it saw the unsubscribe are returned too and can be given
        back at once instead of after their ack wait. Before naking anything, call
        :meth:`purge_requests`.
        """
        if self.closed:
            return []
        self.closed = True
        self._wake.set()
        sub, self._sub = self._sub, None
        if sub is not None:
            if self._nc.is_connected:
                try:
                    async with asyncio.timeout(timeout):
                        await sub.drain()  # type: ignore[no-untyped-call]
                except (TimeoutError, nats.errors.Error):
                    self._discard(sub)
            else:  # reconnecting: the server forgot the subscription already
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        leftover = list(self.buffer)
        self.buffer.clear()
        return leftover

    def _discard(self, sub: Subscription) -> None:
        """A drain cut short leaves nats-py's subscription task running: stop it."""
        with contextlib.suppress(Exception):
            sub._stop_processing()
            self._nc._remove_sub(sub._id)

    async def purge_requests(self, timeout: float) -> None:
        """Make the server drop our requests now that the inbox is gone.

        A consumer-info request makes the server sweep its waiting requests for
        lost interest (``processWaiting``), so the deliveries we give back next do
        not meet our dead requests (see the module docstring).
        """
        if self._outstanding <= 0:
            return
        with contextlib.suppress(Exception):
            await self._api.consumer_info(self.stream, self.consumer, timeout)
        self._outstanding = 0
