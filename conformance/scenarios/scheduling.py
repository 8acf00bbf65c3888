"""Delayed publish, delayed redelivery and priorities."""

from __future__ import annotations

import time

from bus.capabilities import Feature
from conformance._scenario import expect, scenario
from conformance.context import Context

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
    """nack(delay) redelivers no earlier than the delay, with attempt + 1."""
    b = await ctx.connect()
    topic, group = ctx.topic("nackdelay"), ctx.group()
    await b.declare(topic, groups=[group])
    mid = await b.publish(topic, b"retry me")
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1, ack=False)
        started = time.monotonic()
        await d.nack(delay=2.0)
        (again,) = await ctx.collect(sub, 1, timeout=2.0 + 15)
        elapsed = time.monotonic() - started
    expect(again.message.id == mid, "wrong message")
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
    expect(order[:5] == high, "equal priorities keep publish order")
