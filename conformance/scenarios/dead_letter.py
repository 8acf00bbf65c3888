"""Dead-lettering: explicit, after retries, and for undecodable payloads."""

from __future__ import annotations

import asyncio
import itertools
import time

from pydantic import BaseModel

from bus import Fixed, Retry
from bus.capabilities import Feature
from bus.topics import dlq_topic
from conformance._scenario import expect, scenario
from conformance.context import Context

#: The retry scenario's fixed backoff between attempts (seconds).
_BACKOFF = 0.3
# How much shorter than the backoff a gap between attempts may be (the broker's delay
# timer against our monotonic clock).
_EARLY = 0.05
#: How long to watch for a second dead letter (or another handler call) after the first.
_AFTERWARDS = 1.0


class Order(BaseModel):
    number: int


@scenario(Feature.DEAD_LETTER)
async def explicit_dead_letter(ctx: Context) -> None:
    """dead_letter(reason) moves the message to <topic>.dlq with the reason headers."""
    b = await ctx.connect()
    topic, group = ctx.topic("dlq"), ctx.group()
    audit = ctx.group("audit")
    await b.declare(topic, groups=[group])
    await b.declare(dlq_topic(topic), groups=[audit])
    mid = await b.publish(topic, b"poison", headers={"tenant": "t1"})
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1, ack=False)
        await d.dead_letter("cannot parse invoice")
        await ctx.expect_nothing(sub, 1.0, "a dead-lettered message came back")
    async with b.subscribe(dlq_topic(topic), group=audit) as dead:
        (x,) = await ctx.collect(dead, 1)
        await ctx.expect_nothing(dead, _AFTERWARDS, "a second dead letter")
    h = x.message.headers
    expect(x.message.id == mid, "the dead letter must keep the message id")
    expect(x.message.data == b"poison", "the dead letter must keep the payload")
    expect(h.get("tenant") == "t1", "user headers must be kept")
    expect(h.get("bus-dlq-reason") == "cannot parse invoice", f"reason {h.get('bus-dlq-reason')!r}")
    expect(h.get("bus-dlq-topic") == topic, f"original topic {h.get('bus-dlq-topic')!r}")
    expect(h.get("bus-dlq-group") == group, f"group {h.get('bus-dlq-group')!r}")
    expect(h.get("bus-dlq-attempts") == "1", f"attempts {h.get('bus-dlq-attempts')!r}")


@scenario(Feature.DEAD_LETTER, Feature.NACK_DELAY, timeout=90)
async def retry_then_dead_letter(ctx: Context) -> None:
    """A handler that keeps failing is retried with backoff, then dead-lettered."""
    b = await ctx.connect()
    topic, group = ctx.topic("retry"), ctx.group()
    audit = ctx.group("audit")
    await b.declare(topic, groups=[group])
    await b.declare(dlq_topic(topic), groups=[audit])
    calls: list[int] = []
    called_at: list[float] = []  # monotonic time of each handler call

    async def handler(order: Order) -> None:
        called_at.append(time.monotonic())
        calls.append(order.number)
        raise ValueError(f"backend down for order {order.number}")

    mid = await b.publish(topic, Order(number=7))
    worker = b.consume(topic, handler, group=group, retry=Retry(3, Fixed(_BACKOFF)))
    async with worker, b.subscribe(dlq_topic(topic), group=audit) as dead:
        (x,) = await ctx.collect(dead, 1, timeout=45)
        calls_when_dead = len(calls)
        # the worker keeps running: a dead-lettered message must not come back to it
        await ctx.expect_nothing(dead, _AFTERWARDS, "a second dead letter")
    h = x.message.headers
    expect(x.message.id == mid, "wrong dead letter")
    expect(
        len(calls) == calls_when_dead,
        f"the handler ran {len(calls) - calls_when_dead} more times after dead-lettering",
    )
    expect(calls == [7, 7, 7], f"handler must run exactly 3 times, ran {len(calls)}")
    # lower bounds only: a slow machine may retry late, never early
    gaps = [later - earlier for earlier, later in itertools.pairwise(called_at)]
    expect(
        all(gap >= _BACKOFF - _EARLY for gap in gaps),
        f"retried after {', '.join(f'{g:.3f}s' for g in gaps)}: sooner than the"
        f" {_BACKOFF}s backoff",
    )
    expect(h.get("bus-dlq-attempts") == "3", f"attempts {h.get('bus-dlq-attempts')!r}")
    expect(h.get("bus-dlq-error") == "ValueError", f"error {h.get('bus-dlq-error')!r}")
    expect("backend down" in h.get("bus-dlq-reason", ""), f"reason {h.get('bus-dlq-reason')!r}")
    expect(h.get("bus-dlq-group") == group and h.get("bus-dlq-topic") == topic, "origin headers")
    expect(worker.stats.dead_lettered == 1 and worker.stats.retried == 2, f"{worker.stats}")


@scenario(Feature.DEAD_LETTER)
async def undecodable_payload_dead_lettered(ctx: Context) -> None:
    """A payload the handler's type cannot decode is dead-lettered at once, unretried."""
    b = await ctx.connect()
    topic, group = ctx.topic("undecodable"), ctx.group()
    audit = ctx.group("audit")
    await b.declare(topic, groups=[group])
    await b.declare(dlq_topic(topic), groups=[audit])
    calls: list[Order] = []

    async def handler(order: Order) -> None:
        calls.append(order)

    bad = await b.publish(topic, b"\x00 not json")
    await b.publish(topic, Order(number=1))
    async with (
        b.consume(topic, handler, group=group),
        b.subscribe(dlq_topic(topic), group=audit) as dead,
    ):
        (x,) = await ctx.collect(dead, 1)
        for _ in range(100):
            if calls:
                break
            await asyncio.sleep(0.1)
        await ctx.expect_nothing(dead, _AFTERWARDS, "a second dead letter")
    expect(x.message.id == bad, "the undecodable message must be the dead letter")
    expect(x.message.headers.get("bus-dlq-attempts") == "1", "dead-lettered on first attempt")
    expect("undecodable" in x.message.headers.get("bus-dlq-reason", ""), "reason says why")
    expect(calls == [Order(number=1)], f"handler calls {calls!r}")
