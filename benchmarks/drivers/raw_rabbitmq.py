"""Raw aio-pika on RabbitMQ, at its best: a confirm channel, a topic exchange, one
durable queue per group (the queue type the library uses), consumers with a large
prefetch that ``basic_ack`` each message; batches are concurrent confirmed
publishes awaited together."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from backends.rabbitmq._wire import encode
from benchmarks.drivers.base import Consumer, Driver, OnMessage, envelope_message, fresh_attributes

__all__ = ["RabbitRawDriver"]

_EXCHANGE = "bench.raw"


class _RabbitConsumer(Consumer):
    def __init__(self, conn: aio_pika.abc.AbstractConnection, queue: str, prefetch: int) -> None:
        super().__init__()
        self._conn = conn
        self._queue_name = queue
        self._prefetch = prefetch
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None

    async def open(self) -> None:
        self._channel = await self._conn.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.get_queue(self._queue_name, ensure=False)

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        assert self._queue is not None, "open() first"
        now = time.monotonic_ns

        async def handle(message: AbstractIncomingMessage) -> None:
            on_message(message.body)
            await message.ack()
            self.last_settle_ns = now()

        tag = await self._queue.consume(handle)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await self._queue.cancel(tag)

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            with contextlib.suppress(Exception):
                await channel.close()


class RabbitRawDriver(Driver):
    side = "raw"

    def __init__(
        self, backend: str, url: str, queue_type: str = "quorum", *, enveloped: bool = False
    ) -> None:
        super().__init__(backend, url)
        self.queue_type = queue_type
        #: publish the library's CloudEvents properties and headers with each payload
        #: (envelope cost)
        self.enveloped = enveloped
        self._templates: dict[str, tuple[str | None, dict[str, Any]]] = {}
        self._conn: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def open(self) -> None:
        self._conn = await aio_pika.connect_robust(self.url)
        self._channel = await self._conn.channel(publisher_confirms=True)
        self._exchange = await self._channel.declare_exchange(
            _EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    @staticmethod
    def queue_name(topic: str, group: str) -> str:
        return f"benchraw.{topic}.{group}"

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        assert self._channel is not None
        assert self._exchange is not None
        for group in groups:
            queue = await self._channel.declare_queue(
                self.queue_name(topic, group),
                durable=True,
                arguments={"x-queue-type": self.queue_type},
            )
            await queue.bind(self._exchange, routing_key=topic)

    def _message(self, topic: str, payload: bytes) -> aio_pika.Message:
        if not self.enveloped:
            return aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        template = self._templates.get(topic)
        if template is None:
            props = encode(envelope_message(topic))
            template = self._templates[topic] = (props.content_type, dict(props.headers or {}))
        content_type, headers = template
        mid, when = fresh_attributes()
        # the properties and headers the library writes: message_id and timestamp
        # (whole seconds) as properties, every attribute also in the headers table
        return aio_pika.Message(
            payload,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type=content_type,
            message_id=mid,
            timestamp=dt.datetime.now(dt.UTC).replace(microsecond=0),
            headers={**headers, "ce-id": mid, "ce-time": when},
        )

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self._exchange is not None
        await self._exchange.publish(self._message(topic, payload), routing_key=topic)

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        exchange = self._exchange
        assert exchange is not None
        await asyncio.gather(
            *(exchange.publish(self._message(topic, p), routing_key=topic) for p in payloads)
        )

    def consumer(self, topic: str, group: str, prefetch: int) -> Consumer:
        assert self._conn is not None
        return _RabbitConsumer(self._conn, self.queue_name(topic, group), prefetch)

    async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:
        assert self._conn is not None
        channel = await self._conn.channel()
        try:
            for topic in topics:
                for group in groups:
                    with contextlib.suppress(Exception):
                        await channel.queue_delete(self.queue_name(topic, group))
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    def settings(self) -> dict[str, Any]:
        return {
            "client": "aio-pika",
            "queue_type": self.queue_type,
            "delivery_mode": "persistent",
            "ack": "basic_ack per message",
        }

    async def broker_info(self) -> dict[str, str]:
        assert self._conn is not None
        props: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            props = dict(self._conn.transport.connection.server_properties)  # type: ignore[union-attr]

        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        return {
            "implementation": text(props.get("product", "RabbitMQ")),
            "version": text(props.get("version", "?")),
        }
