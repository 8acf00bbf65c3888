"""Raw redis-py (asyncio) on Redis Streams, at its best: XADD per message, a
non-transactional pipeline of XADDs per batch, XREADGROUP of ``prefetch`` entries
and ONE XACK with every id of the read batch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from backends.redis_streams.entries import DATA, PREFIX, to_fields
from benchmarks.drivers.base import Consumer, Driver, OnMessage, envelope_message, fresh_attributes

__all__ = ["RedisRawDriver"]

_FIELD = b"d"
_ID, _TIME = f"{PREFIX}id", f"{PREFIX}time"


class _RedisConsumer(Consumer):
    def __init__(
        self, r: aioredis.Redis, key: str, group: str, prefetch: int, field: bytes
    ) -> None:
        super().__init__()
        self._r = r
        self._key = key
        self._group = group
        self._prefetch = prefetch
        self._field = field
        self._name = f"c{id(self):x}"

    async def open(self) -> None:
        pass  # XREADGROUP creates the consumer on first read

    async def run(self, on_message: OnMessage, stop: asyncio.Event) -> None:
        r, key, group, name, field = self._r, self._key, self._group, self._name, self._field
        streams: Any = {key: ">"}
        now = time.monotonic_ns
        while not stop.is_set():
            resp: Any = await r.xreadgroup(group, name, streams, count=self._prefetch, block=100)
            if not resp:
                continue
            ids = []
            for _key, entries in resp:
                for mid, fields in entries:
                    on_message(fields[field])
                    ids.append(mid)
            await r.xack(key, group, *ids)
            self.last_settle_ns = now()

    async def close(self) -> None:
        with contextlib.suppress(ResponseError):
            await self._r.xgroup_delconsumer(self._key, self._group, self._name)


class RedisRawDriver(Driver):
    side = "raw"

    def __init__(self, backend: str, url: str, *, enveloped: bool = False) -> None:
        super().__init__(backend, url)
        self._r: aioredis.Redis | None = None
        #: publish the library's CloudEvents fields with each payload (envelope cost)
        self.enveloped = enveloped
        self._templates: dict[str, dict[Any, Any]] = {}

    @property
    def r(self) -> aioredis.Redis:
        assert self._r is not None, "driver is not open"
        return self._r

    async def open(self) -> None:
        self._r = aioredis.Redis.from_url(self.url)
        await self._r.ping()  # type: ignore[misc]  # redis-py types ping for both APIs

    async def close(self) -> None:
        if self._r is not None:
            r, self._r = self._r, None
            await r.aclose()

    @staticmethod
    def key(topic: str) -> str:
        return f"benchraw:{topic}"

    async def declare(self, topic: str, groups: Sequence[str]) -> None:
        for group in groups:
            try:
                await self.r.xgroup_create(self.key(topic), group, id="$", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _fields(self, topic: str, payload: bytes) -> dict[Any, Any]:
        template = self._templates.get(topic)
        if template is None:
            flat = to_fields(envelope_message(topic))
            template = self._templates[topic] = dict(zip(flat[::2], flat[1::2], strict=True))
        mid, when = fresh_attributes()
        return {**template, DATA: payload, _ID: mid, _TIME: when}

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.enveloped:
            await self.r.xadd(self.key(topic), self._fields(topic, payload))
            return
        await self.r.xadd(self.key(topic), {_FIELD: payload})

    async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
        key = self.key(topic)
        pipe = self.r.pipeline(transaction=False)
        if self.enveloped:
            for payload in payloads:
                pipe.xadd(key, self._fields(topic, payload))
        else:
            for payload in payloads:
                pipe.xadd(key, {_FIELD: payload})
        await pipe.execute()

    def consumer(self, topic: str, group: str, prefetch: int) -> Consumer:
        # entries written enveloped carry the payload in the library's data field
        field = DATA.encode() if self.enveloped else _FIELD
        return _RedisConsumer(self.r, self.key(topic), group, prefetch, field)

    async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:
        if topics:
            await self.r.delete(*(self.key(t) for t in topics))

    def settings(self) -> dict[str, Any]:
        return {"client": "redis-py asyncio", "ack": "one XACK per XREADGROUP batch"}

    async def broker_info(self) -> dict[str, str]:
        info = await self.r.info("server")
        return {"implementation": "Redis", "version": str(info.get("redis_version", "?"))}
