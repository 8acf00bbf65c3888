"""The library side: ``bus.connect`` and the public API, used as a user would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import bus
from benchmarks.drivers.base import Consumer, Driver, OnMessage
from bus.topics import dlq_topic

__all__ = ["LibraryConsumer", "LibraryDriver"]

#: How long one receive waits before looking at the stop flag: the same poll the
#: library's own Worker uses, so backends see the fetch pattern real consumers make.
_POLL = 0.25


class LibraryConsumer(Consumer):
    """``bus.subscribe(topic, group=...)``; per delivery: callback, ``await d.ack()``."""

    def __init__(self, b: bus.Bus, topic: str, group: str, prefetch: int) -> None:
        super().__init__()
        self._bus = b
        self._topic = topic
        self._group = group
        self._prefetch = prefetch
        self._sub: bus.Subscription | None = None

    async def open(self) -> None:
        self._sub = self._bus.subscribe(self._topic, group=self._group, prefetch=self._prefetch)
        await self._sub.open()

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        sub = self._sub
        assert sub is not None, "open() first"
        receive = sub.receive
        now = time.monotonic_ns
        while not stop.is_set():
            try:
                d = await receive(_POLL)
            except TimeoutError:
                continue
            on_message(d.message.data)
            await d.ack()
            self.last_settle_ns = now()

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.close()


class LibraryDriver(Driver):
    side = "bus"

    def __init__(self, backend: str, url: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(backend, url)
        self.options = dict(options or {})
        self._bus: bus.Bus | None = None

    @property
    def cheap_join(self) -> bool:  # type: ignore[override]
        return self.backend != "kafka"

    @property
    def bus(self) -> bus.Bus:
        if self._bus is None:
            raise RuntimeError("driver is not open")
        return self._bus

    async def open(self) -> None:
        self._bus = await bus.connect(self.url, **self.options)

    async def close(self) -> None:
        if self._bus is not None:
            b, self._bus = self._bus, None
            await b.close()

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        await self.bus.declare(topic, groups=list(groups))

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.bus.publish(topic, payload)

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        await self.bus.publish_many(topic, payloads)

    def consumer(self, topic: str, group: str, prefetch: int) -> Consumer:
        return LibraryConsumer(self.bus, topic, group, prefetch)

    async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:
        """The library's own teardown: each topic and its dead-letter topic, with the
        groups (``Backend.delete_topic``, as the conformance suite does)."""
        backend = self.bus.backend
        for topic in topics:
            for name in (topic, dlq_topic(topic)):
                await backend.delete_topic(name, groups)

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend_class": "", "options": {}}
        if self._bus is not None:
            backend = self._bus.backend
            out["backend_class"] = f"{type(backend).__module__}.{type(backend).__qualname__}"
            out["options"] = backend.options.model_dump(mode="json", exclude={"source"})
        return out
