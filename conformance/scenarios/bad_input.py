"""Bad input gets the documented error and loses nothing."""

from __future__ import annotations

from pydantic import BaseModel

from bus.errors import (
    DecodeError,
    InvalidArgument,
    InvalidHeader,
    InvalidTopic,
    MessageTooLarge,
)
from conformance._scenario import ConformanceFailure, expect, scenario
from conformance.context import Context


class Invoice(BaseModel):
    total: int


async def _raises(error: type[Exception], call: object, what: str) -> None:
    try:
        await call  # type: ignore[misc]
    except error:
        return
    except Exception as exc:
        raise ConformanceFailure(
            f"{what}: raised {type(exc).__name__}, not {error.__name__}"
        ) from exc
    raise ConformanceFailure(f"{what}: no {error.__name__} raised")


@scenario()
async def invalid_topic_rejected(ctx: Context) -> None:
    """Invalid topic and group names raise InvalidTopic before anything is sent."""
    b = await ctx.connect()
    for bad in ("bad topic!", "", "a..b", "trailing.", "*", "x" * 300, "_reserved"):
        await _raises(InvalidTopic, b.publish(bad, b"x"), f"publish to {bad[:20]!r}")
    try:
        b.subscribe("with space", group="g")
    except InvalidTopic:
        pass
    else:
        raise ConformanceFailure("subscribe to an invalid topic did not raise InvalidTopic")
    try:
        b.subscribe(ctx.topic("ok"), group="bad.group")
    except InvalidTopic:
        pass
    else:
        raise ConformanceFailure("an invalid group name did not raise InvalidTopic")


@scenario()
async def invalid_arguments_rejected(ctx: Context) -> None:
    """Bad headers, priorities, delays and timeouts raise InvalidArgument; nothing is sent."""
    b = await ctx.connect()
    topic, group = ctx.topic("badargs"), ctx.group()
    await b.declare(topic, groups=[group])
    await _raises(InvalidHeader, b.publish(topic, b"x", headers={"ce-id": "1"}), "reserved")
    await _raises(InvalidHeader, b.publish(topic, b"x", headers={"n": 1}), "non-str header")  # type: ignore[dict-item]
    await _raises(InvalidArgument, b.publish(topic, b"x", priority=12), "priority 12")
    await _raises(InvalidArgument, b.publish(topic, b"x", delay=-1), "negative delay")
    await _raises(InvalidArgument, b.publish(topic, object()), "unserialisable payload")
    await _raises(InvalidArgument, b.request(topic, b"x", timeout=0), "zero timeout")
    ok = await b.publish(topic, b"fine")
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1)
        expect(d.message.id == ok, "a rejected publish was delivered")
        await ctx.expect_nothing(sub, 0.5, "rejected publishes")


@scenario()
async def oversize_message_rejected(ctx: Context) -> str:
    """A message above the backend's limit raises MessageTooLarge; nothing is sent."""
    b = await ctx.connect()
    topic, group = ctx.topic("oversize"), ctx.group()
    await b.declare(topic, groups=[group])
    limit = ctx.max_message_bytes
    try:
        await b.publish(topic, b"x" * (limit + 1))
    except MessageTooLarge as exc:
        expect(exc.limit == limit, f"error names limit {exc.limit}, backend says {limit}")
    else:
        raise ConformanceFailure(f"a {limit + 1}-byte message was accepted")
    ok = await b.publish(topic, b"small")
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1)
        expect(d.message.id == ok, "the oversize message was delivered")
        await ctx.expect_nothing(sub, 0.5, "after the oversize message")
    return f"limit {limit} bytes"


@scenario()
async def undecodable_payload_raises(ctx: Context) -> None:
    """decode() of a payload that does not fit raises DecodeError; the message stays usable."""
    b = await ctx.connect()
    topic, group = ctx.topic("decode"), ctx.group()
    await b.declare(topic, groups=[group])
    await b.publish(topic, b"\xff\xfe not json")
    async with b.subscribe(topic, group=group) as sub:
        (d,) = await ctx.collect(sub, 1, ack=False)
        for target in (Invoice, dict, str):
            try:
                d.decode(target)
            except DecodeError:
                continue
            raise ConformanceFailure(f"decode({target.__name__}) did not raise DecodeError")
        expect(d.decode(bytes) == b"\xff\xfe not json", "raw bytes must stay available")
        await d.ack()
