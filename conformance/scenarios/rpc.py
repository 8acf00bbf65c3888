"""Request / reply."""

from __future__ import annotations

import asyncio
import time

import bus
from bus.capabilities import Feature
from bus.errors import NoResponders, RequestTimeout
from conformance._scenario import ConformanceFailure, expect, scenario
from conformance.context import Context


@scenario(Feature.REQUEST_REPLY, timeout=90)
async def request_reply(ctx: Context) -> None:
    """request() returns the handler's return value, correlated, also when concurrent."""
    server, client = await ctx.connect(), await ctx.connect()
    topic = ctx.topic("rpc")

    async def classify(payload: dict[str, int]) -> dict[str, int]:
        return {"n": payload["n"], "square": payload["n"] ** 2}

    async with server.consume(topic, classify, group=ctx.group("rpc"), concurrency=4):
        reply = await client.request(topic, {"n": 3}, timeout=20, correlation_id="saga-9")
        expect(reply.decode(dict) == {"n": 3, "square": 9}, f"reply {reply.data!r}")
        expect(reply.correlation_id == "saga-9", f"correlation_id {reply.correlation_id!r}")
        replies = await asyncio.gather(
            *(client.request(topic, {"n": n}, timeout=20) for n in range(10))
        )
    squares = [r.decode(dict)["square"] for r in replies]
    expect(squares == [n * n for n in range(10)], f"replies mixed up: {squares}")


@scenario(Feature.REQUEST_REPLY)
async def delivery_reply(ctx: Context) -> None:
    """A subscriber can answer with Delivery.reply(); the reply names its request."""
    server, client = await ctx.connect(), await ctx.connect()
    topic, group = ctx.topic("reply"), ctx.group()
    await server.declare(topic, groups=[group])
    async with server.subscribe(topic, group=group) as sub:

        async def answer() -> str:
            d = await sub.receive(timeout=20)
            await d.reply(b"pong", headers={"status": "ok"})
            await d.ack()
            return d.message.id

        task = asyncio.create_task(answer())
        reply = await client.request(topic, b"ping", timeout=20)
        request_id = await task
    expect(reply.data == b"pong", f"reply {reply.data!r}")
    expect(reply.headers.get("status") == "ok", f"headers {dict(reply.headers)!r}")
    # the id of the request as the server received it: naming any other message
    # (a fresh id, the reply's own) would not let a requester correlate the answer
    expect(
        reply.causation_id == request_id,
        f"the reply must name its request: causation_id {reply.causation_id!r},"
        f" request id {request_id!r}",
    )


@scenario(Feature.REQUEST_REPLY)
async def request_timeout(ctx: Context) -> str:
    """Without a reply, request() raises RequestTimeout after its timeout."""
    b = await ctx.connect()
    topic, group = ctx.topic("silent"), ctx.group()
    await b.declare(topic, groups=[group])
    async with b.subscribe(topic, group=group):  # a consumer that never answers
        started = time.monotonic()
        try:
            await b.request(topic, b"anyone?", timeout=1.5)
        except RequestTimeout:
            elapsed = time.monotonic() - started
        else:
            raise ConformanceFailure("request() returned without a reply")
    expect(1.4 <= elapsed < 6.0, f"RequestTimeout after {elapsed:.2f}s for a 1.5s timeout")
    return f"raised after {elapsed:.2f}s"


@scenario(Feature.REQUEST_REPLY, Feature.NO_RESPONDERS)
async def no_responders(ctx: Context) -> str:
    """A request to a topic nobody consumes fails fast with NoResponders."""
    b = await ctx.connect()
    topic = ctx.topic("nobody")
    started = time.monotonic()
    try:
        await b.request(topic, b"hello?", timeout=10)
    except NoResponders:
        elapsed = time.monotonic() - started
    except bus.RequestTimeout:
        raise ConformanceFailure("timed out instead of raising NoResponders") from None
    else:
        raise ConformanceFailure("request() to an unconsumed topic returned a reply")
    expect(elapsed < 5.0, f"NoResponders took {elapsed:.2f}s")
    return f"raised after {elapsed:.3f}s"
