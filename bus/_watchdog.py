"""Safety time limits for many short awaits, enforced by one periodic check.

``asyncio.timeout()`` schedules and cancels a timer for every call: a
``TimerHandle``, a heap push, the context manager's state (~3 us of CPU per call,
measured on a 2-core CI machine, about as much as building the message being
published). A backend bounds every broker call by a generous limit (Redis: 15 s or
more) that exists to catch a dead socket, not to time anything, so it does not need
a timer of its own per call: :class:`Watchdog` records each call's deadline in a
set, and one task wakes every ``resolution`` seconds while calls are in flight and
cancels those past their deadline, which then raise :class:`TimeoutError` (up to
``resolution`` late).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["Watchdog"]

T = TypeVar("T")


class _Call:
    __slots__ = ("deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.expired = False


class Watchdog:
    """Bounds awaits of one event loop; :meth:`close` it with its owner."""

    def __init__(self, resolution: float = 0.25) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be > 0")
        self.resolution = resolution
        self._calls: set[_Call] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def bound(self, op: Awaitable[T], timeout: float) -> T:
        """Await ``op``; :class:`TimeoutError` once ``timeout`` seconds have passed
        (checked every :attr:`resolution`). Cancelling the caller cancels ``op`` as
        usual (a cancellation of its own is never turned into a timeout)."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - only awaited from a task
            raise RuntimeError("Watchdog.bound must be awaited from a task")
        loop = task.get_loop()
        call = _Call(task, loop.time() + timeout)
        self._calls.add(call)
        ticker = self._ticker
        if ticker is None or ticker.get_loop() is not loop:
            self._ticker = loop.create_task(self._tick(loop), name="bus-watchdog")
        try:
            result = await op
        except BaseException as exc:
            # Our cancellation (the deadline passed) and nobody else's: a timeout, as
            # with asyncio.timeout(), also where op turned the cancellation into an
            # error of its own. Any other cancellation goes on as it is.
            if call.expired and task.uncancel() == 0:
                raise TimeoutError(f"no result within {timeout}s") from exc
            raise
        finally:
            self._calls.discard(call)
        if call.expired:
            task.uncancel()  # op absorbed the cancellation and finished anyway
        return result

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            # runs while calls are in flight; the next call after an idle tick starts
            # a new ticker, so an idle watchdog holds no task
            while self._calls:
                await asyncio.sleep(self.resolution)
                now = loop.time()
                for call in [c for c in self._calls if c.deadline <= now]:
                    self._calls.discard(call)
                    call.expired = True
                    call.task.cancel()
        finally:
            if self._ticker is asyncio.current_task():
                self._ticker = None

    def close(self) -> None:
        """Stop the ticker (the calls in flight are no longer bounded)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
