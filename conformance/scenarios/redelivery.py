"""Redelivery: nack, closed or departed consumers, leases, one-shot settlement."""

from __future__ import annotations

import asyncio
import time

from bus.capabilities import Feature
from bus.errors import DeliveryStateError
from conformance._scenario import ConformanceFailure, expect, scenario
from conformance.context import Context
from conformance.scenarios._attributes import expect_attributes, publish_with_attributes

#: ack_timeout of the lease scenarios (seconds).
_LEASE = 2.0
# How much earlier than the lease a redelivery may arrive (clock granularity of the
# broker's idle/ack-wait timer against ours).
_EARLY = 0.1


@scenario()
async def nack_redelivers(ctx: Context) -> None:
    """A nacked delivery comes back, same message with every attribute, attempt + 1."""
    b = await ctx.connect()
    topic, group = ctx.topic("nack"), ctx.group()
    await b.declare(topic, groups=[group])
    sent = await publish_with_attributes(b, topic, b"again")
    async with b.subscribe(topic, group=group) as sub:
        (first,) = await ctx.collect(sub, 1, ack=False)
        expect_attributes(first.message, sent, "first delivery")
        await first.nack()
        (second,) = await ctx.collect(sub, 1, ack=False)
        # a backend that requeues by re-publishing must carry every attribute along
        expect_attributes(second.message, sent, "redelivery")
        expect(
            second.message.time == first.message.time,
            f"time changed on redelivery: {second.message.time} != {first.message.time}",
        )
        expect(second.attempt == 2, f"redelivery must have attempt 2, got {second.attempt}")
        await second.ack()
        await ctx.expect_nothing(sub, 1.0, "acked message came back")


@scenario(timeout=90)
async def close_without_ack_redelivers(ctx: Context) -> None:
    """Deliveries held un-acked by a member that closes go to another member."""
    first, second = await ctx.connect(), await ctx.connect()
    topic, group = ctx.topic("closed"), ctx.group()
    await first.declare(topic, groups=[group])
    sent = await first.publish_many(topic, [f"m{i}" for i in range(5)])
    sub1 = await first.subscribe(topic, group=group, prefetch=10).open()
    await ctx.collect(sub1, 5, ack=False)
    async with second.subscribe(topic, group=group) as sub2:
        await sub1.close()
        got = await ctx.collect(sub2, 5, timeout=45, what="redeliveries")
    ctx.expect_same_ids(ctx.ids(got), sent, "redelivered after close")
    expect(all(d.attempt >= 2 for d in got), f"attempts {[d.attempt for d in got]}")


@scenario(timeout=90)
async def connection_close_redelivers(ctx: Context) -> None:
    """Deliveries held by a connection that goes away go to another member."""
    doomed, survivor = await ctx.connect(), await ctx.connect()
    topic, group = ctx.topic("connclose"), ctx.group()
    await survivor.declare(topic, groups=[group])
    sent = await survivor.publish_many(topic, [f"m{i}" for i in range(5)])
    sub1 = await doomed.subscribe(topic, group=group, prefetch=10).open()
    await ctx.collect(sub1, 5, ack=False)
    async with survivor.subscribe(topic, group=group) as sub2:
        await doomed.close()
        got = await ctx.collect(sub2, 5, timeout=45, what="redeliveries")
    ctx.expect_same_ids(ctx.ids(got), sent, "redelivered after the connection closed")
    # each was delivered once to the closed connection already
    expect(all(d.attempt >= 2 for d in got), f"attempts {[d.attempt for d in got]}")


@scenario(Feature.LEASE, timeout=60)
async def lease_expiry_redelivers(ctx: Context) -> str:
    """A delivery left unsettled past ack_timeout goes to another member, not before."""
    holder = await ctx.connect(ack_timeout=_LEASE)
    other = await ctx.connect(ack_timeout=_LEASE)
    topic, group = ctx.topic("lease"), ctx.group()
    await holder.declare(topic, groups=[group])
    mid = await holder.publish(topic, b"slow")
    # Started before the holder subscribes: the lease cannot begin before the first
    # delivery, so the lower bound below holds however slow the subscribe is.
    started = time.monotonic()
    sub1 = await holder.subscribe(topic, group=group).open()
    (held,) = await ctx.collect(sub1, 1, ack=False)
    async with other.subscribe(topic, group=group) as sub2:
        (d,) = await ctx.collect(sub2, 1, timeout=_LEASE + 15, what="lease redeliveries")
    elapsed = time.monotonic() - started
    expect(d.message.id == mid, "another message arrived")
    expect(d.attempt >= 2, f"attempt {d.attempt}")
    expect(held.settled is None, "the holder did not settle")
    expect(
        elapsed >= _LEASE - _EARLY,
        f"redelivered after {elapsed:.2f}s, before the {_LEASE}s ack_timeout expired",
    )
    await sub1.close()
    return f"redelivered after {elapsed:.1f}s (ack_timeout {_LEASE}s)"


@scenario(Feature.LEASE, timeout=60)
async def in_progress_extends_lease(ctx: Context) -> None:
    """in_progress() keeps a slow handler's delivery from going to another member."""
    holder = await ctx.connect(ack_timeout=_LEASE)
    other = await ctx.connect(ack_timeout=_LEASE)
    topic, group = ctx.topic("progress"), ctx.group()
    await holder.declare(topic, groups=[group])
    await holder.publish(topic, b"long job")
    async with holder.subscribe(topic, group=group) as sub1:
        (d,) = await ctx.collect(sub1, 1, ack=False)
        async with other.subscribe(topic, group=group) as sub2:
            deadline = time.monotonic() + 3 * _LEASE  # three lease lengths
            while time.monotonic() < deadline:
                await d.in_progress()
                try:
                    stolen = await sub2.receive(timeout=0.5)
                except TimeoutError:
                    continue
                raise ConformanceFailure(f"delivery handed to another member: {stolen!r}")
            await d.ack()
            await ctx.expect_nothing(sub2, 3.0, "acked after in_progress")


@scenario()
async def settle_is_one_shot(ctx: Context) -> None:
    """Repeating a settlement is a no-op; a conflicting one raises DeliveryStateError."""
    b = await ctx.connect()
    topic, group = ctx.topic("settle"), ctx.group()
    await b.declare(topic, groups=[group])
    await b.publish_many(topic, [b"a", b"b"])
    async with b.subscribe(topic, group=group) as sub:
        d1, d2 = await ctx.collect(sub, 2, ack=False)
        await d1.ack()
        await d1.ack()
        for conflicting in (d1.nack(), d1.dead_letter("late"), d1.in_progress()):
            try:
                await conflicting
            except DeliveryStateError:
                continue
            raise ConformanceFailure("a conflicting settlement after ack() did not raise")
        await d2.nack()
        await d2.nack()
        try:
            await d2.ack()
        except DeliveryStateError:
            pass
        else:
            raise ConformanceFailure("ack() after nack() did not raise")
        (again,) = await ctx.collect(sub, 1, ack=False)
        expect(again.message.id == d2.message.id, "the nacked message must come back once")
        await again.ack()
        await ctx.expect_nothing(sub, 1.0, "after settling everything")


@scenario()
async def concurrent_settlement(ctx: Context) -> None:
    """Two tasks racing to settle one delivery: exactly one settlement wins."""
    b = await ctx.connect()
    topic, group = ctx.topic("race"), ctx.group()
    await b.declare(topic, groups=[group])
    await b.publish(topic, b"x")
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1, ack=False)
        results = await asyncio.gather(d.ack(), d.nack(), return_exceptions=True)
        errors = [r for r in results if isinstance(r, DeliveryStateError)]
        expect(len(errors) == 1, f"expected one DeliveryStateError, got {results!r}")
        expect(d.settled == "ack", f"state {d.settled!r}")
        await ctx.expect_nothing(sub, 1.0, "the ack won, nothing may come back")
