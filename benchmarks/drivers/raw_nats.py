"""Raw nats-py on JetStream, at its best: ``js.publish`` awaiting the PubAck, batches
as concurrent publishes awaited together, a durable pull consumer fetching
``prefetch`` (hundreds) at a time with a per-message ``ack()`` (no flush each)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from backends.nats_jetstream import _wire
from benchmarks.drivers.base import Consumer, Driver, OnMessage, envelope_message, fresh_attributes

__all__ = ["NatsRawDriver"]


def stream_name(topic: str) -> str:
    return "BENCHRAW_" + topic.replace(".", "_").replace("-", "_")


class _NatsConsumer(Consumer):
    def __init__(self, js: Any, topic: str, group: str, prefetch: int) -> None:
        super().__init__()
        self._js = js
        self._topic = topic
        self._group = group
        self._prefetch = prefetch
        self._psub: Any = None

    async def open(self) -> None:
        self._psub = await self._js.pull_subscribe_bind(
            durable=self._group, stream=stream_name(self._topic)
        )

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        psub = self._psub
        assert psub is not None, "open() first"
        now = time.monotonic_ns
        while not stop.is_set():
            try:
                msgs = await psub.fetch(self._prefetch, timeout=0.1)
            except TimeoutError:  # nats.errors.TimeoutError is one too
                continue
            for msg in msgs:
                on_message(msg.data)
                await msg.ack()
            self.last_settle_ns = now()

    async def close(self) -> None:
        if self._psub is not None:
            psub, self._psub = self._psub, None
            with contextlib.suppress(Exception):
                await psub.unsubscribe()


class NatsRawDriver(Driver):
    side = "raw"

    def __init__(
        self, backend: str, url: str, storage: str = "file", *, enveloped: bool = False
    ) -> None:
        super().__init__(backend, url)
        self.storage = storage
        self._nc: Any = None
        self._js: Any = None
        #: publish the library's CloudEvents headers with each payload (envelope cost)
        self.enveloped = enveloped
        self._templates: dict[str, dict[str, str]] = {}

    def _headers(self, topic: str) -> dict[str, str]:
        template = self._templates.get(topic)
        if template is None:
            template = self._templates[topic] = _wire.encode(envelope_message(topic))
        mid, when = fresh_attributes()
        return {**template, "ce-id": mid, "ce-time": when, _wire.MSG_ID: mid}

    async def open(self) -> None:
        self._nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=2)
        self._js = self._nc.jetstream()

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc = self._nc, None
            with contextlib.suppress(Exception):
                await nc.drain()

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        storage = api.StorageType.FILE if self.storage == "file" else api.StorageType.MEMORY
        name = stream_name(topic)
        with contextlib.suppress(nats.js.errors.BadRequestError):  # exists
            await self._js.add_stream(name=name, subjects=[topic], storage=storage)
        for group in groups:
            await self._js.add_consumer(
                name,
                api.ConsumerConfig(
                    durable_name=group,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    deliver_policy=api.DeliverPolicy.ALL,
                    max_ack_pending=10_000,
                ),
            )

    # The bare paths stay exactly the raw idiom (the baseline every ratio divides by).
    async def publish(self, topic: str, payload: bytes) -> None:
        if self.enveloped:
            await self._js.publish(topic, payload, headers=self._headers(topic))
            return
        await self._js.publish(topic, payload)

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        publish = self._js.publish
        if self.enveloped:
            await asyncio.gather(
                *(publish(topic, p, headers=self._headers(topic)) for p in payloads)
            )
            return
        await asyncio.gather(*(publish(topic, p) for p in payloads))

    def consumer(self, topic: str, group: str, prefetch: int) -> Consumer:
        return _NatsConsumer(self._js, topic, group, prefetch)

    async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:
        for topic in topics:
            with contextlib.suppress(Exception):
                await self._js.delete_stream(stream_name(topic))

    def settings(self) -> dict[str, Any]:
        return {
            "client": "nats-py",
            "storage": self.storage,
            "ack": "msg.ack() per message (no flush), pull fetch of prefetch",
        }

    async def broker_info(self) -> dict[str, str]:
        info = getattr(self._nc, "_server_info", {}) or {}
        return {
            "implementation": "NATS JetStream",
            "version": str(info.get("version", "?")),
        }
