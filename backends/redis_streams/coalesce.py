"""Concurrent publishes sent together: one pipeline for what callers queue meanwhile.

A publish is one round trip, and with redis-py most of its cost is the client's own
work per call (connection checkout, packing, reply parsing, its instrumentation
hooks), not the broker's: eight tasks publishing one message at a time each paid it
eight times, while a pipeline of eight pays most of it once. :class:`Coalescer` runs
a caller's operations at once when nothing is in flight; callers arriving while a
send is in flight queue theirs, and when it finishes everything queued goes out as
one pipeline (up to ``limit`` operations; the rest in the next), each caller getting
its own results back in order. A lone publisher never waits for anyone; a queued one
waits for at most the send in flight before its own.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

from .connection import Op

__all__ = ["Coalescer"]

Send = Callable[[list[Op], str], Awaitable[list[Any]]]
_Queued = tuple[list[Op], str, "asyncio.Future[list[Any]]"]


class Coalescer:
    """Runs lists of operations through ``send(ops, what)``, merging those that queue
    up (``what`` names the work in errors: the callers' own when they agree)."""

    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self._limit = limit
        self._busy = False
        self._queue: collections.deque[_Queued] = collections.deque()
        self._flushes: set[asyncio.Task[None]] = set()
        self.sends = 0
        """Pipelines sent (for tests and introspection)."""

    async def run(self, ops: list[Op], what: str) -> list[Any]:
        """The results of ``ops`` (at most ``limit`` of them), in order; raises what
        ``send`` raised for the pipeline they went in."""
        if not self._busy:
            self._busy = True
            self.sends += 1
            try:
                return await self._send(ops, what)
            finally:
                self._busy = False
                self._start_flush()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((ops, what, future))
        # a caller cancelled here cancels only its wait: its operations may still be
        # sent (a publish is at-least-once; the caller did not see a confirm)
        return await future

    def _start_flush(self) -> None:
        if self._busy:
            return
        batch: list[_Queued] = []
        size = 0
        while self._queue:
            item = self._queue[0]
            if batch and size + len(item[0]) > self._limit:
                break
            self._queue.popleft()
            if not item[2].done():  # done: its caller was cancelled before it went out
                batch.append(item)
                size += len(item[0])
        if not batch:
            return
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Queued]) -> None:
        try:
            merged = [op for ops, _, _ in batch for op in ops]
            labels = {what for _, what, _ in batch}
            what = labels.pop() if len(labels) == 1 else f"publishing to {len(labels)} topics"
            self.sends += 1
            try:
                results = await self._send(merged, what)
            except BaseException as exc:  # every caller of the pipeline sees its failure
                for _, _, future in batch:
                    if future.done():
                        continue
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            start = 0
            for ops, _, future in batch:
                end = start + len(ops)
                if not future.done():
                    future.set_result(results[start:end])
                start = end
        finally:
            self._busy = False
            self._start_flush()

    async def close(self) -> None:
        """Wait for the pipelines in flight (their callers are waiting for them)."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
