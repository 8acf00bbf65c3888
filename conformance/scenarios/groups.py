"""Consumer groups: competing members, independent groups, retention without members,
successive subscribers, per-key order, replay."""

from __future__ import annotations

import asyncio
import collections
import contextlib

import bus
from bus.capabilities import Feature
from conformance._scenario import expect, scenario
from conformance.context import Context


@scenario(timeout=90)
async def group_competing_consumers(ctx: Context) -> str:
    """Members of one group compete: each message goes to one member, never to two.

    How the messages are spread is the broker's business and is reported, not
    asserted: on Kafka a partition is the unit of work, and a burst of keyless
    messages may sit in one partition (the sticky partitioner), hence one member."""
    conns = [await ctx.connect() for _ in range(3)]
    topic, group = ctx.topic("compete"), ctx.group()
    await conns[0].declare(topic, groups=[group])
    subs = [await c.subscribe(topic, group=group, prefetch=10).open() for c in conns]
    sent = await conns[0].publish_many(topic, [f"j{i}" for i in range(90)])
    received: list[str] = []
    per_member = collections.Counter[int]()
    done = asyncio.Event()

    async def member(n: int, sub: bus.Subscription) -> None:
        while not done.is_set():
            try:
                d = await sub.receive(timeout=0.5)
            except TimeoutError:
                continue
            received.append(d.message.id)
            per_member[n] += 1
            await d.ack()
            if len(set(received)) >= len(sent):
                done.set()

    tasks = [asyncio.create_task(member(n, s)) for n, s in enumerate(subs)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), 45)
    await asyncio.sleep(0.5)  # would a second copy show up?
    done.set()
    await asyncio.gather(*tasks)
    for s in subs:
        await s.close()
    ctx.expect_same_ids(received, sent, "competing consumers")
    return "per member: " + ", ".join(str(per_member[n]) for n in range(3))


@scenario()
async def two_groups_each_get_all(ctx: Context) -> None:
    """Two groups of one topic each receive every message."""
    b = await ctx.connect()
    topic, g1, g2 = ctx.topic("twogroups"), ctx.group("a"), ctx.group("b")
    await b.declare(topic, groups=[g1, g2])
    sent = await b.publish_many(topic, [f"m{i}" for i in range(25)])
    for g in (g1, g2):
        async with b.subscribe(topic, group=g) as sub:
            got = await ctx.collect(sub, 25)
        ctx.expect_same_ids(ctx.ids(got), sent, f"group {g}")


@scenario()
async def declared_group_keeps_messages(ctx: Context) -> None:
    """Jobs published after declare(groups=...) and before the first worker starts are kept."""
    producer = await ctx.connect()
    topic, group = ctx.topic("declared"), ctx.group("workers")
    await producer.declare(topic, groups=[group])
    await producer.declare(topic, groups=[group])  # idempotent
    sent = await producer.publish_many(topic, [f"job{i}" for i in range(10)])
    worker = await ctx.connect()
    async with worker.subscribe(topic, group=group) as sub:
        got = await ctx.collect(sub, 10)
    ctx.expect_same_ids(ctx.ids(got), sent, "declared group")


@scenario()
async def group_keeps_messages_while_no_member(ctx: Context) -> None:
    """A group created by subscribing keeps what is published while no member is connected."""
    b = await ctx.connect()
    topic, group = ctx.topic("nomember"), ctx.group()
    async with b.subscribe(topic, group=group):
        pass
    sent = await b.publish_many(topic, [f"m{i}" for i in range(10)])
    async with b.subscribe(topic, group=group) as sub:
        got = await ctx.collect(sub, 10)
    ctx.expect_same_ids(ctx.ids(got), sent, "group without members")


@scenario(timeout=120)
async def continue_after_close(ctx: Context) -> str:
    """Successive subscribers of one group, each taking a batch then closing, lose nothing."""
    b = await ctx.connect()
    topic, group = ctx.topic("successive"), ctx.group()
    await b.declare(topic, groups=[group])
    sent = await b.publish_many(topic, [f"m{i}" for i in range(100)])
    acked: list[str] = []
    rounds = 0
    while len(set(acked)) < len(sent) and rounds < 30:
        rounds += 1
        c = await ctx.connect()
        async with c.subscribe(topic, group=group, prefetch=10) as sub:
            for _ in range(20):
                try:
                    d = await sub.receive(timeout=10)
                except TimeoutError:
                    break
                acked.append(d.message.id)
                await d.ack()
        await c.close()
    ctx.expect_same_ids(acked, sent, "successive subscribers")
    return f"{rounds} subscribers"


@scenario()
async def concurrent_close(ctx: Context) -> None:
    """Closing subscriptions while tasks wait on them ends the iteration promptly."""
    b = await ctx.connect()
    topic = ctx.topic("close")
    subs = [await b.subscribe(topic, group=ctx.group()).open() for _ in range(4)]

    async def iterate(sub: bus.Subscription) -> int:
        return len([d async for d in sub])

    tasks = [asyncio.create_task(iterate(s)) for s in subs]
    await asyncio.sleep(0.3)
    await asyncio.wait_for(asyncio.gather(*(s.close() for s in subs)), 10)
    counts = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    expect(counts == [0, 0, 0, 0], f"nothing was published, yet got {counts}")
    expect(all(s.closed for s in subs), "subscriptions must report closed")


@scenario(Feature.KEY_ORDER, timeout=90)
async def per_key_order(ctx: Context) -> None:
    """With one consumer, messages of one key arrive in publish order."""
    b = await ctx.connect()
    topic, group = ctx.topic("order"), ctx.group()
    await b.declare(topic, groups=[group])
    sent: dict[str, list[str]] = {"k1": [], "k2": [], "k3": []}
    for i in range(30):
        for key, ids in sent.items():
            ids.append(await b.publish(topic, f"{key}-{i}", key=key))
    async with b.subscribe(topic, group=group, prefetch=20) as sub:
        got = await ctx.collect(sub, 90, timeout=45)
    for key, ids in sent.items():
        order = [d.message.id for d in got if d.message.key == key]
        expect(order == ids, f"key {key}: arrival order differs from publish order")


@scenario(Feature.REPLAY)
async def replay_new_group(ctx: Context) -> None:
    """A new group with start="earliest" reads history; one with "latest" does not."""
    b = await ctx.connect()
    topic = ctx.topic("replay")
    async with b.subscribe(topic, group=ctx.group("first")):
        pass  # make sure the topic exists where the backend needs that
    sent = [await b.publish(topic, f"h{i}", key="history") for i in range(10)]
    async with b.subscribe(topic, group=ctx.group("old"), start="earliest") as sub:
        got = await ctx.collect(sub, 10)
    expect(ctx.ids(got) == sent, "replayed history must arrive complete and in order")
    async with b.subscribe(topic, group=ctx.group("new"), start="latest") as sub:
        later = await b.publish(topic, b"later")
        (d,) = await ctx.collect(sub, 1)
        expect(d.message.id == later, "start=latest must not replay history")
