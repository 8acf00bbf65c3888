"""Graceful shutdown and recovery from a broker restart."""

from __future__ import annotations

import asyncio
import contextlib

import bus
from bus.errors import BusError
from conformance._scenario import expect, scenario
from conformance.context import Context


@scenario(timeout=90)
async def graceful_shutdown(ctx: Context) -> str:
    """worker.stop() lets in-flight handlers finish; nothing is lost or done twice."""
    b = await ctx.connect()
    topic, group = ctx.topic("shutdown"), ctx.group()
    await b.declare(topic, groups=[group])
    sent = await b.publish_many(topic, [f"job{i}" for i in range(12)])
    started: list[str] = []
    finished: list[str] = []
    gate = asyncio.Event()

    async def slow(message: bus.Message) -> None:
        started.append(message.id)
        if len(started) >= 4:
            gate.set()
        await asyncio.sleep(1.0)
        finished.append(message.id)

    worker = b.consume(topic, slow, group=group, concurrency=4, prefetch=4)
    async with worker:
        await asyncio.wait_for(gate.wait(), 30)
    in_flight_at_stop = set(started)
    expect(
        in_flight_at_stop <= set(finished),
        f"{len(in_flight_at_stop - set(finished))} in-flight handlers were cut off",
    )
    rest = b.consume(topic, slow, group=group, concurrency=4)
    async with rest:
        for _ in range(300):
            if set(finished) >= set(sent):
                break
            await asyncio.sleep(0.1)
    ctx.expect_same_ids(finished, sent, "jobs across a graceful stop")
    return f"{len(in_flight_at_stop)} in flight at stop, finished before it returned"


@scenario(timeout=180, tags=("restart",))
async def reconnect_after_restart(ctx: Context) -> str:
    """Publishers and consumers carry on by themselves across a broker restart, and every
    confirmed message is delivered (where the broker keeps data across restarts)."""
    expect(ctx.isolated is not None, "needs an isolated broker")
    async with ctx.isolated_broker() as broker:
        b = await ctx.connect_isolated(broker, operation_timeout=60.0)
        topic, group = ctx.topic("restart"), ctx.group()
        await b.declare(topic, groups=[group])
        confirmed: list[str] = []
        after_restart: list[str] = []
        received: set[str] = set()
        restarted = asyncio.Event()
        publishing_done = asyncio.Event()

        async def publisher() -> None:
            # Publish until 100 messages are confirmed after the restart returned: a
            # broker may keep serving for seconds after it was told to stop (Tansu
            # drains for ~5 s), so a fixed count could all land before the restart.
            i = 0
            while len(after_restart) < 100 and i < 20_000:
                i += 1
                try:
                    mid = await b.publish(topic, f"m{i}".encode())
                except BusError:
                    await asyncio.sleep(0.2)  # not confirmed: may or may not arrive
                    continue
                confirmed.append(mid)
                if restarted.is_set():
                    after_restart.append(mid)
                await asyncio.sleep(0.01)
            publishing_done.set()

        async def consumer() -> None:
            async with b.subscribe(topic, group=group, prefetch=50) as sub:
                while True:
                    try:
                        d = await sub.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    except BusError:
                        await asyncio.sleep(0.2)
                        continue
                    received.add(d.message.id)
                    with contextlib.suppress(BusError):
                        await d.ack()

        consuming = asyncio.create_task(consumer())
        producing = asyncio.create_task(publisher())
        while len(confirmed) < 100 and not producing.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await broker.restart()
        restarted.set()
        await asyncio.wait_for(publishing_done.wait(), 120)
        producing.result()
        must_arrive = set(confirmed) if broker.keeps_data else set(after_restart)
        for _ in range(600):
            if must_arrive <= received:
                break
            await asyncio.sleep(0.1)
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        missing = must_arrive - received
        expect(len(after_restart) > 0, "no publish was confirmed after the restart")
        expect(not missing, f"{len(missing)} of {len(must_arrive)} confirmed messages lost")
        scope = "all confirmed" if broker.keeps_data else "confirmed after the restart"
        return f"{len(confirmed)} confirmed, {len(must_arrive)} checked ({scope})"
