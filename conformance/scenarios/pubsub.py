"""Publish and subscribe: payloads, attributes, isolation, concurrency, broadcast."""

from __future__ import annotations

import asyncio
import datetime as dt

from pydantic import BaseModel

from bus import Outgoing
from bus.capabilities import Feature
from conformance._scenario import expect, scenario
from conformance.context import Context

#: How far (seconds) a message's time may lie from the publish call that created it.
_TIME_SLACK = 60
#: The payload DESIGN requires every backend to carry byte-exact.
_LARGE = 1024 * 1024
#: What the large payload's envelope (id, attributes, headers) may take beyond it.
_LARGE_HEADROOM = 16 * 1024


class Job(BaseModel):
    name: str
    size: int
    tags: list[str]


@scenario()
async def roundtrip_attributes(ctx: Context) -> None:
    """Every message attribute and header arrives exactly as published."""
    b = await ctx.connect(source="conformance-producer")
    topic, group = ctx.topic("attrs"), ctx.group()
    await b.declare(topic, groups=[group])
    headers = {"tenant": "a", "x-unicode": "grüße ✓ 日本", "empty": ""}
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    before = dt.datetime.now(dt.UTC)
    mid = await b.publish(
        topic,
        b"payload",
        key="user-42",
        headers=headers,
        type="com.example.job.created",
        correlation_id="saga-1",
        causation_id="cmd-7",
        trace_parent=trace,
        schema_version="3",
    )
    after = dt.datetime.now(dt.UTC)
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1)
    m = d.message
    expect(m.id == mid, f"id {m.id!r} != published {mid!r}")
    expect(m.topic == topic and d.topic == topic, f"topic {m.topic!r}")
    expect(m.data == b"payload", f"payload {m.data!r}")
    expect(dict(m.headers) == headers, f"headers {dict(m.headers)!r} != {headers!r}")
    expect(m.key == "user-42", f"key {m.key!r}")
    expect(m.type == "com.example.job.created", f"type {m.type!r}")
    expect(m.source == "conformance-producer", f"source {m.source!r}")
    expect(m.correlation_id == "saga-1", f"correlation_id {m.correlation_id!r}")
    expect(m.causation_id == "cmd-7", f"causation_id {m.causation_id!r}")
    expect(m.trace_parent == trace, f"trace_parent {m.trace_parent!r}")
    expect(m.schema_version == "3", f"schema_version {m.schema_version!r}")
    expect(m.content_type == "application/octet-stream", f"content_type {m.content_type!r}")
    expect(m.time.tzinfo is not None, "time must be timezone-aware (UTC)")
    # the time the message was created, not a default or the delivery time: within a
    # minute of the publish call (generous: a slow machine, clock steps)
    slack = dt.timedelta(seconds=_TIME_SLACK)
    expect(
        before - slack <= m.time <= after + slack,
        f"time {m.time.isoformat()} is not within {_TIME_SLACK}s of the publish call"
        f" ({before.isoformat()} .. {after.isoformat()})",
    )
    expect(d.attempt == 1, f"first delivery must have attempt 1, got {d.attempt}")
    expect(d.group == group, f"delivery group {d.group!r}")


async def _roundtrip_payload(ctx: Context, name: str, data: object) -> tuple[bytes, str]:
    b = await ctx.connect()
    topic, group = ctx.topic(name), ctx.group()
    await b.declare(topic, groups=[group])
    await b.publish(topic, data)
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1, timeout=30)
    return d.message.data, d.message.content_type


@scenario()
async def payload_empty(ctx: Context) -> None:
    """An empty payload is delivered as empty bytes."""
    data, _ = await _roundtrip_payload(ctx, "empty", b"")
    expect(data == b"", f"got {data!r}")


@scenario()
async def payload_binary(ctx: Context) -> None:
    """Every byte value survives (no text decoding on the way)."""
    sent = bytes(range(256)) * 16
    data, ctype = await _roundtrip_payload(ctx, "binary", sent)
    expect(data == sent, "binary payload changed in transit")
    expect(ctype == "application/octet-stream", f"content_type {ctype!r}")


@scenario()
async def payload_unicode(ctx: Context) -> None:
    """A str payload is UTF-8 with a text content type and decodes back."""
    text = "naïve café – 日本語 – 🚀"  # noqa: RUF001 - the dash is the point
    data, ctype = await _roundtrip_payload(ctx, "unicode", text)
    expect(data == text.encode(), "unicode payload changed in transit")
    expect(ctype.startswith("text/plain"), f"content_type {ctype!r}")


@scenario()
async def payload_model(ctx: Context) -> None:
    """A pydantic model is JSON on the wire and decodes back into the model."""
    job = Job(name="classify", size=3, tags=["a", "b"])
    b = await ctx.connect()
    topic, group = ctx.topic("model"), ctx.group()
    await b.declare(topic, groups=[group])
    await b.publish(topic, job)
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1)
    expect(d.message.content_type == "application/json", d.message.content_type)
    expect(d.decode(Job) == job, f"decoded {d.decode(Job)!r}")
    expect(d.decode(dict) == job.model_dump(), "decode(dict) differs")


@scenario(timeout=90)
async def payload_large(ctx: Context) -> str:
    """A 1 MiB payload (or, where the broker's own limit is 1 MiB with the headers
    counted, as NATS's and Kafka's defaults are, that limit less the envelope's
    headroom) arrives byte-exact."""
    limit = ctx.max_message_bytes
    size = min(_LARGE, limit - _LARGE_HEADROOM)
    # a smaller declared limit fails here instead of passing with a small (or empty,
    # or negative-sized) payload: "large" means within the envelope of 1 MiB
    expect(
        size >= _LARGE - 2 * _LARGE_HEADROOM,
        f"the backend declares a {limit}-byte message limit: too small for the 1 MiB"
        f" payload DESIGN requires (with {_LARGE_HEADROOM} bytes of envelope headroom)",
    )
    sent = bytes(i % 251 for i in range(size))
    data, _ = await _roundtrip_payload(ctx, "large", sent)
    expect(data == sent, f"large payload changed: {len(data)} bytes of {size}")
    return f"{size} bytes"


@scenario()
async def topic_isolation(ctx: Context) -> None:
    """A subscriber of one topic never sees another topic's messages."""
    b = await ctx.connect()
    t1, t2, group = ctx.topic("iso-a"), ctx.topic("iso-b"), ctx.group()
    await b.declare(t1, groups=[group])
    await b.declare(t2, groups=[group])
    sent1 = [await b.publish(t1, f"a{i}") for i in range(10)]
    sent2 = [await b.publish(t2, f"b{i}") for i in range(10)]
    async with b.subscribe(t1, group=group) as s1, b.subscribe(t2, group=group) as s2:
        got1 = await ctx.collect(s1, 10)
        got2 = await ctx.collect(s2, 10)
        await ctx.expect_nothing(s1, 0.5, "topic isolation")
    ctx.expect_same_ids(ctx.ids(got1), sent1, "topic a")
    ctx.expect_same_ids(ctx.ids(got2), sent2, "topic b")


@scenario(timeout=90)
async def concurrent_publishers(ctx: Context) -> str:
    """Many tasks on several connections publishing at once lose nothing."""
    conns = [await ctx.connect() for _ in range(3)]
    topic, group = ctx.topic("concurrent"), ctx.group()
    await conns[0].declare(topic, groups=[group])

    async def producer(n: int) -> list[str]:
        b = conns[n % len(conns)]
        return [await b.publish(topic, f"{n}:{i}".encode()) for i in range(40)]

    batches = await asyncio.gather(*(producer(n) for n in range(8)))
    sent = [mid for batch in batches for mid in batch]
    async with conns[0].subscribe(topic, group=group, prefetch=100) as sub:
        got = await ctx.collect(sub, len(sent), timeout=45)
        await ctx.expect_nothing(sub, 0.5, "after all messages")
    ctx.expect_same_ids(ctx.ids(got), sent, "concurrent publishers")
    return f"{len(sent)} messages from 8 tasks on 3 connections"


@scenario(timeout=90)
async def publish_many_batch(ctx: Context) -> None:
    """publish_many returns ids in order, and every message arrives with its attributes."""
    b = await ctx.connect()
    topic, group = ctx.topic("batch"), ctx.group()
    await b.declare(topic, groups=[group])
    items: list[object] = [f"m{i}" for i in range(150)]
    items += [Outgoing(f"k{i}", key="k", headers={"n": str(i)}) for i in range(50)]
    # what each item must arrive as: (payload, key, headers), in item order
    wanted: list[tuple[bytes, str | None, dict[str, str]]] = [
        (f"m{i}".encode(), None, {}) for i in range(150)
    ]
    wanted += [(f"k{i}".encode(), "k", {"n": str(i)}) for i in range(50)]
    sent = await b.publish_many(topic, items)
    expect(len(sent) == 200 and len(set(sent)) == 200, "publish_many must return 200 ids")
    expect(sent == sorted(sent), "ids must sort by creation time (UUIDv7)")
    async with b.subscribe(topic, group=group, prefetch=200) as sub:
        got = await ctx.collect(sub, 200, timeout=45)
    ctx.expect_same_ids(ctx.ids(got), sent, "publish_many")
    # by id, so an item delivered with another item's payload or attributes is caught
    by_id = dict(zip(sent, wanted, strict=True))
    for d in got:
        m = d.message
        data, key, headers = by_id[m.id]
        expect(m.data == data, f"message {m.id}: payload {m.data!r}, sent {data!r}")
        expect(m.key == key, f"message {m.id} ({data!r}): key {m.key!r}, sent {key!r}")
        expect(
            dict(m.headers) == headers,
            f"message {m.id} ({data!r}): headers {dict(m.headers)!r}, sent {headers!r}",
        )


@scenario(Feature.BROADCAST)
async def broadcast_every_subscriber(ctx: Context) -> None:
    """Every live broadcast subscriber receives every message."""
    conns = [await ctx.connect() for _ in range(3)]
    topic = ctx.topic("broadcast")
    subs = [await c.subscribe(topic).open() for c in conns]
    sent = [await conns[0].publish(topic, f"e{i}") for i in range(20)]
    for n, sub in enumerate(subs):
        got = await ctx.collect(sub, 20)
        ctx.expect_same_ids(ctx.ids(got), sent, f"broadcast subscriber {n}")
        await sub.close()


@scenario(Feature.BROADCAST)
async def broadcast_starts_at_latest(ctx: Context) -> None:
    """A broadcast subscriber gets what is published after it subscribed, not before."""
    b = await ctx.connect()
    topic = ctx.topic("bcast-latest")
    await b.publish(topic, b"before")
    async with b.subscribe(topic) as sub:
        after = await b.publish(topic, b"after")
        (d,) = await ctx.collect(sub, 1)
        expect(d.message.id == after, f"got {d.message.data!r}, expected the later message")
        await ctx.expect_nothing(sub, 0.5, "broadcast start=latest")
