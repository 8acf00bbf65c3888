"""Raw aiokafka on a Kafka-protocol broker, at its best: ``acks=all`` (no idempotent
producer: Tansu does not offer it), ``send_and_wait`` per message, batches as
``send`` futures gathered together (the producer batches on the wire), a group
consumer reading with ``getmany`` and ONE ``commit()`` per fetched batch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import DeleteGroupsRequest

from backends.kafka.records import PREFIX, encode_headers
from benchmarks.config import Kafka
from benchmarks.drivers.base import Consumer, Driver, OnMessage, envelope_message, fresh_attributes

__all__ = ["KafkaRawDriver", "bootstrap"]

_ID, _TIME = f"{PREFIX}id", f"{PREFIX}time"
#: DeleteGroups: the group does not exist (nothing to delete).
_ERR_GROUP_NOT_FOUND = 69


def bootstrap(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` -> ``h1:9092,h2:9092``."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    return netloc or "127.0.0.1:9092"


class _KafkaConsumer(Consumer):
    def __init__(self, servers: str, topic: str, group: str, prefetch: int, cfg: Kafka) -> None:
        super().__init__()
        self._prefetch = prefetch
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=servers,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            rebalance_timeout_ms=cfg.rebalance_timeout_ms,
            max_poll_records=prefetch,
        )
        self._started = False

    @property
    def assignment(self) -> set[Any]:
        return set(self._consumer.assignment()) if self._started else set()

    async def open(self) -> None:
        await self._consumer.start()
        self._started = True
        await self.wait_assigned(60.0)

    async def wait_assigned(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"kafka consumer got no partitions within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        consumer = self._consumer
        now = time.monotonic_ns
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=self._prefetch)
            if not batches:
                continue
            for records in batches.values():
                for record in records:
                    on_message(record.value)
            await consumer.commit()
            self.last_settle_ns = now()

    async def close(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):
                await self._consumer.stop()


class KafkaRawDriver(Driver):
    side = "raw"
    cheap_join = False

    def __init__(self, backend: str, url: str, cfg: Kafka, *, enveloped: bool = False) -> None:
        super().__init__(backend, url)
        self.cfg = cfg
        #: publish the library's CloudEvents headers with each payload (envelope cost)
        self.enveloped = enveloped
        self._templates: dict[str, list[tuple[str, bytes]]] = {}
        self.servers = bootstrap(url)
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def open(self) -> None:
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await self._admin.start()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.servers,
            acks="all",
            enable_idempotence=False,
            linger_ms=self.cfg.linger_ms,
            max_batch_size=self.cfg.max_batch_bytes,
            max_request_size=4 * 1024 * 1024,
        )
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            with contextlib.suppress(Exception):
                await producer.stop()
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(Exception):
                await admin.close()

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        assert self._admin is not None
        existing = set(await self._admin.list_topics())
        if topic not in existing:
            await self._admin.create_topics(
                [NewTopic(topic, num_partitions=self.cfg.partitions, replication_factor=1)]
            )

    def _headers(self, topic: str) -> list[tuple[str, bytes]]:
        template = self._templates.get(topic)
        if template is None:
            encoded = encode_headers(envelope_message(topic))
            template = [(k, v) for k, v in encoded if k not in (_ID, _TIME)]
            self._templates[topic] = template
        mid, when = fresh_attributes()
        return [*template, (_ID, mid.encode()), (_TIME, when.encode())]

    # The bare paths stay exactly the raw idiom (the baseline every ratio divides by).
    async def publish(self, topic: str, payload: bytes) -> None:
        producer = self._producer
        assert producer is not None
        if self.enveloped:
            await producer.send_and_wait(topic, payload, headers=self._headers(topic))
            return
        await producer.send_and_wait(topic, payload)

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        producer = self._producer
        assert producer is not None
        if self.enveloped:
            futures = [
                await producer.send(topic, p, headers=self._headers(topic)) for p in payloads
            ]
        else:
            futures = [await producer.send(topic, p) for p in payloads]
        await asyncio.gather(*futures)

    def consumer(self, topic: str, group: str, prefetch: int) -> Consumer:
        return _KafkaConsumer(self.servers, topic, group, prefetch, self.cfg)

    async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:
        """Delete the workload's topics, then its consumer groups with their committed
        offsets (each group id is unique to a run, so none is used again: left behind,
        they would pile up on the broker), as the library's ``delete_topic`` does.
        Raises ``RuntimeError`` naming each group the broker refused to delete."""
        if self._admin is None:
            return
        if topics:
            with contextlib.suppress(Exception):
                await self._admin.delete_topics(list(topics))
        if groups:
            await self._delete_groups(groups)

    async def _delete_groups(self, ids: Sequence[str]) -> None:
        # aiokafka's admin client has no delete_consumer_groups: DeleteGroups (API 42)
        # goes to each group's coordinator through the client's request path, as in
        # backends.kafka.
        admin = self._admin
        assert admin is not None
        by_node: dict[int, list[str]] = {}
        for gid in ids:
            by_node.setdefault(await admin.find_coordinator(gid), []).append(gid)
        refused = []
        for node, names in by_node.items():
            response = await admin._send_request_to_node(node, DeleteGroupsRequest(names))
            refused += [
                f"{name} (error {code})"
                for name, code in response.results
                if code not in (0, _ERR_GROUP_NOT_FOUND)
            ]
        if refused:
            raise RuntimeError(f"kafka refused to delete consumer groups: {', '.join(refused)}")

    def settings(self) -> dict[str, Any]:
        return {
            "client": "aiokafka",
            "acks": "all",
            "enable_idempotence": False,
            "ack": "one commit() per getmany batch",
            **self.cfg.model_dump(),
        }

    async def broker_info(self) -> dict[str, str]:
        return {"implementation": "Kafka protocol", "version": "?"}
