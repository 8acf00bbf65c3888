"""Delayed publish, delayed redelivery and priorities."""

from __future__ import annotations

import time

from bus.capabilities import Feature
from conformance._scenario import expect, scenario
from conformance.context import Context
from conformance.scenarios._attributes import expect_attributes, publish_with_attributes

# How much earlier than asked a delayed delivery may arrive (clock granularity).
_EARLY = 0.1


@scenario(Feature.DELAY, timeout=60)
async def publish_delay(ctx: Context) -> str:
    """A delayed message is not delivered before its delay, and is delivered after it."""
    b = await ctx.connect()
    topic, group = ctx.topic("delay"), ctx.group()
    await b.declare(topic, groups=[group])
    async with b.subscribe(topic, group=group) as sub:
        started = time.monotonic()
        mid = await b.publish(topic, b"later", delay=2.0)
        now = await b.publish(topic, b"now")
        (first,) = await ctx.collect(sub, 1)
        expect(first.message.id == now, "the undelayed message must arrive first")
        (d,) = await ctx.collect(sub, 1, timeout=2.0 + 15)
        elapsed = time.monotonic() - started
    expect(d.message.id == mid, "wrong message")
    expect(elapsed >= 2.0 - _EARLY, f"delivered after {elapsed:.2f}s, before its 2.0s delay")
    return f"delivered after {elapsed:.2f}s (delay 2.0s)"


@scenario(Feature.NACK_DELAY, timeout=60)
async def nack_delay(ctx: Context) -> str:
    """nack(delay) redelivers no earlier than the delay, with attempt + 1 and every
    attribute of the message."""
    b = await ctx.connect()
    topic, group = ctx.topic("nackdelay"), ctx.group()
    await b.declare(topic, groups=[group])
    sent = await publish_with_attributes(b, topic, b"retry me")
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1, ack=False)
        started = time.monotonic()
        await d.nack(delay=2.0)
        (again,) = await ctx.collect(sub, 1, timeout=2.0 + 15)
        elapsed = time.monotonic() - started
    expect_attributes(d.message, sent, "first delivery")
    # a delayed nack often goes through a wait queue or retry stream: a re-publish
    # that must carry every attribute along
    expect_attributes(again.message, sent, "delayed redelivery")
    expect(
        again.message.time == d.message.time,
        f"time changed on redelivery: {again.message.time} != {d.message.time}",
    )
    expect(again.attempt == 2, f"attempt {again.attempt}")
    expect(elapsed >= 2.0 - _EARLY, f"redelivered after {elapsed:.2f}s, before its 2.0s delay")
    return f"redelivered after {elapsed:.2f}s (delay 2.0s)"


@scenario(Feature.PRIORITY)
async def priority_order(ctx: Context) -> None:
    """Waiting messages of higher priority are delivered first."""
    b = await ctx.connect()
    topic, group = ctx.topic("priority"), ctx.group()
    await b.declare(topic, groups=[group])
    low = [await b.publish(topic, f"low{i}", priority=1) for i in range(5)]
    high = [await b.publish(topic, f"high{i}", priority=8) for i in range(5)]
    async with b.subscribe(topic, group=group, prefetch=1) as sub:
        got = await ctx.collect(sub, 10)
    order = ctx.ids(got)
    expect(set(order[:5]) == set(high), "the five high-priority messages must come first")
    expect(set(order[5:]) == set(low), "then the five low-priority ones")
    # positions in publish order, so a failure shows how they were shuffled
    expect(
        order[:5] == high,
        f"equal priorities keep publish order: high got as {[high.index(i) for i in order[:5]]}",
    )
    expect(
        order[5:] == low,
        f"equal priorities keep publish order: low got as {[low.index(i) for i in order[5:]]}",
    )
