"""Generic request/reply over publish + a private broadcast inbox.

Used by backends without a native reply mechanism. Each backend connection owns
one inbox topic (``_inbox.<uuid>``), subscribed lazily on the first request; a
reader task resolves waiting requests by the reply's ``causation_id`` (the
request's id), so concurrent requests that share a ``correlation_id`` (one saga)
do not collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

from bus.capabilities import Feature
from bus.errors import BusClosed, BusError, NoResponders, RequestTimeout

if TYPE_CHECKING:
    from bus.backend import Backend, BackendSubscription
    from bus.message import Message

log = logging.getLogger(__name__)


class InboxRPC:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.inbox = f"_inbox.{uuid.uuid4().hex}"
        self._sub: BackendSubscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, asyncio.Future[Message]] = {}
        self._lock = asyncio.Lock()

    async def _ensure_inbox(self) -> None:
        async with self._lock:
            if self._sub is None:
                self._sub = await self._backend.subscribe(
                    self.inbox, group=None, start="latest", prefetch=256
                )
                self._reader = asyncio.create_task(self._read(self._sub), name="bus-inbox")

    async def _read(self, sub: BackendSubscription) -> None:
        while True:
            try:
                batch = await sub.fetch(256, 1.0)
            except BusError:
                log.warning("reply inbox read failed; retrying", exc_info=True)
                await asyncio.sleep(0.2)
                continue
            for delivery in batch:
                reply = delivery.message
                waiter = self._waiters.pop(reply.causation_id or "", None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(reply)
                try:
                    await delivery.ack()
                except BusError:
                    # a broadcast inbox: an unacked reply costs nothing but its lease;
                    # the reader must outlive it, or every later request times out
                    log.warning("reply inbox ack failed", exc_info=True)

    async def request(self, message: Message, timeout: float) -> Message:
        backend = self._backend
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters[message.id] = waiter
        try:
            # the whole request within its timeout: subscribing the inbox and asking
            # for consumers wait on the broker too
            async with asyncio.timeout(timeout):
                await self._ensure_inbox()
                if backend.capabilities.supports(
                    Feature.NO_RESPONDERS
                ) and not await backend.has_consumers(message.topic):
                    raise NoResponders(f"nothing consumes {message.topic!r}")
                await backend.publish([message.evolve(reply_to=self.inbox)])
                return await waiter
        except TimeoutError:
            raise RequestTimeout(
                f"no reply to {message.id} on {message.topic!r} within {timeout}s"
            ) from None
        finally:
            self._waiters.pop(message.id, None)

    async def reply(self, message: Message) -> None:
        await self._backend.publish([message])

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._sub is not None:
            await self._sub.close()
        for waiter in self._waiters.values():
            if not waiter.done():
                # the caller was not cancelled: it learns that the bus closed
                waiter.set_exception(BusClosed("the bus closed while the request waited"))
