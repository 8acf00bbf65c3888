"""A conformance scenario leaves nothing behind on the broker it ran against.

``conformance.Context`` deletes the topics a scenario named (and their dead-letter
topics) with the groups it named, through ``Backend.delete_topic``. Here a scenario-
like body creates what the scenarios create (a declared group with messages, one
delivery left pending, a dead-letter topic with a group, a priority level and a
delayed message where the backend has them), then each broker is inspected with its
own client: nothing carrying the run's unique marker may remain.
"""

from __future__ import annotations

import contextlib
import uuid
from urllib.parse import urlsplit

import aio_pika
import nats
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

import bus
from bus.capabilities import Feature
from bus.topics import dlq_topic
from conformance.context import Context


async def _populate(ctx: Context) -> tuple[str, str]:
    b = await ctx.connect()
    topic, group = ctx.topic("teardown"), ctx.group()
    await b.declare(topic, groups=[group])
    await b.declare(dlq_topic(topic), groups=[group])
    for n in range(3):
        await b.publish(topic, {"n": n})
    await b.publish(dlq_topic(topic), b"dead")
    caps = b.capabilities
    if caps[Feature.PRIORITY].available:
        await b.publish(topic, {"n": 9}, priority=5)
    if caps[Feature.DELAY].available:
        await b.publish(topic, {"n": 10}, delay=30.0)
    async with b.subscribe(topic, group=group) as sub:
        await sub.receive(timeout=15)  # left unsettled: pending when the scenario ends
    return topic, group


async def _leftovers(url: str, marker: str, names: list[str]) -> list[str]:
    """Names on the broker that carry ``marker`` (``names``: the queues to look for
    where the broker cannot list them)."""
    scheme = urlsplit(url).scheme
    if scheme == "redis":
        client = aioredis.Redis.from_url(url.split("?")[0])
        try:
            return [k.decode() async for k in client.scan_iter(match=f"*{marker}*")]
        finally:
            await client.aclose()
    if scheme == "amqp":
        left = []
        async with await aio_pika.connect(url.split("?")[0]) as conn:
            for name in names:
                channel = await conn.channel()
                try:
                    await channel.declare_queue(name, passive=True)
                    left.append(name)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
        return left
    if scheme == "nats":
        nc = await nats.connect(url.split("?")[0])
        try:
            js = nc.jetstream()
            streams = await js.streams_info()
            left = [s.config.name or "" for s in streams if marker in (s.config.name or "")]
            # delayed messages wait in the shared delay stream, on a subject per topic
            for s in streams:
                if s.config.name == "BUS-DELAYED":
                    held = await js.stream_info("BUS-DELAYED", subjects_filter=">")
                    left += [x for x in held.state.subjects or {} if marker in x]
            return left
        finally:
            await nc.close()
    if scheme == "kafka":
        admin = AIOKafkaAdminClient(bootstrap_servers=urlsplit(url).netloc)
        await admin.start()
        try:
            return [t for t in await admin.list_topics() if marker in t]
        finally:
            await admin.close()
    raise AssertionError(f"no inspection for {scheme}")


async def test_scenario_leaves_nothing_on_the_broker(bus_url: str) -> None:
    async with bus.connect(bus_url) as probe:
        caps, max_bytes = probe.capabilities, probe.backend.max_message_bytes
    ctx = Context(bus_url, {}, caps, max_bytes, None)
    topic, group = await _populate(ctx)
    marker = topic.rsplit(".", 1)[1][:-1]  # the run's id (without the name counter)
    queues = [f"{t}.{group}" for t in (topic, dlq_topic(topic))]

    if bus_url.startswith("memory://"):
        # the in-memory broker lives in this event loop: look while it is still there
        await ctx.aclose()
        async with bus.connect(bus_url) as b:
            left = [t for t in b.backend.broker.topics if marker in t]  # type: ignore[attr-defined]
        assert left == []
        return

    before = await _leftovers(bus_url, marker, queues)
    assert before, "the body created nothing to delete: the test would prove nothing"
    await ctx.aclose()
    assert await _leftovers(bus_url, marker, queues) == []


async def test_delete_topic_is_idempotent_and_messages_are_gone(bus_url: str) -> None:
    """Deleting twice is no error; a group declared again afterwards starts empty."""
    topic = f"teardown.again.{uuid.uuid4().hex[:10]}"
    async with bus.connect(bus_url) as b:
        await b.declare(topic, groups=["g"])
        await b.publish(topic, b"old")
        assert await b.backend.delete_topic(topic, ["g"]) is True
        assert await b.backend.delete_topic(topic, ["g"]) is True
        await b.declare(topic, groups=["g"])
        await b.publish(topic, b"new")
        async with b.subscribe(topic, group="g") as sub:
            d = await sub.receive(timeout=15)
            await d.ack()
            assert d.message.data == b"new"
            with pytest.raises(TimeoutError):
                await sub.receive(timeout=1.0)
        await b.backend.delete_topic(topic, ["g"])
