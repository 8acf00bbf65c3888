"""The public subscription: an async context manager and async iterator of deliveries."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from bus.errors import BusClosed

if TYPE_CHECKING:
    from bus.backend import Backend, BackendSubscription, Start
    from bus.delivery import Delivery

__all__ = ["Subscription"]

# How long one backend fetch may block. Short enough that close() and
# cancellation are prompt, long enough not to spin.
_POLL = 1.0


class Subscription:
    """Deliveries of one topic to one consumer (of a group, or broadcast).

    Use it as ``async with bus.subscribe(...) as sub: async for d in sub: ...``.
    Entering opens the consumer; leaving (or :meth:`close`) stops it and returns
    every unsettled delivery to the group, so another member receives it.
    Iteration ends (``StopAsyncIteration``) once the subscription is closed, also
    when :meth:`close` is called from another task while one waits.
    """

    def __init__(
        self,
        backend: Backend,
        topic: str,
        *,
        group: str | None,
        start: Start,
        prefetch: int,
        on_close: Callable[[Subscription], None] | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.start: Start = start
        self.prefetch = prefetch
        self._backend = backend
        self._inner: BackendSubscription | None = None
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._closed = False
        self._open_lock = asyncio.Lock()
        self._on_close = on_close

    def __repr__(self) -> str:
        kind = f"group={self.group!r}" if self.group else "broadcast"
        return f"<Subscription {self.topic!r} {kind}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self) -> Subscription:
        """Start consuming; returns when the consumer is live. Idempotent."""
        async with self._open_lock:
            if self._closed:
                raise BusClosed(f"{self!r} is closed")
            if self._inner is None:
                inner = await self._backend.subscribe(
                    self.topic, group=self.group, start=self.start, prefetch=self.prefetch
                )
                if self._closed:
                    # close() ran while the backend subscribed: it saw no consumer
                    # to close, so this one would consume (and hold messages) unseen
                    await inner.close()
                    raise BusClosed(f"{self!r} was closed while it opened")
                self._inner = inner
        return self

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        if self._buffer:
            return self._buffer.popleft()
        delivery = await self._next(None)
        if delivery is None:
            raise StopAsyncIteration
        return delivery

    async def receive(self, timeout: float | None = None) -> Delivery:
        """The next delivery; :class:`TimeoutError` after ``timeout`` seconds,
        :class:`bus.BusClosed` once closed."""
        if self._buffer:  # fetched earlier: no deadline, no backend call
            return self._buffer.popleft()
        delivery = await self._next(timeout)
        if delivery is None:
            if self._closed:
                raise BusClosed(f"{self!r} is closed")
            raise TimeoutError(f"no delivery on {self.topic!r} within {timeout}s")
        return delivery

    async def _next(self, timeout: float | None) -> Delivery | None:
        if self._inner is None:
            await self.open()
        inner = self._inner
        assert inner is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            if self._closed:
                return None
            wait = _POLL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    return None
            batch = await inner.fetch(self.prefetch, wait)
            if self._closed:
                # closed while fetching: what arrived is released by inner.close()
                return None
            self._buffer.extend(batch)
        return self._buffer.popleft()

    async def close(self) -> None:
        """Stop consuming and return unsettled deliveries to the group. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        try:
            if self._inner is not None:
                await self._inner.close()
        finally:
            if self._on_close is not None:
                self._on_close(self)

    def buffered(self) -> list[Delivery]:
        """Deliveries fetched from the broker but not yet handed out (unsettled)."""
        return list(self._buffer)
