"""A declared gap is enforced: an unsupported feature fails loudly, never silently.

The scenarios that need an unsupported feature are skipped with the backend's
reason; this scenario proves the other half of the promise: asking for such a
feature raises :class:`bus.UnsupportedFeature` at call time and loses or sends
nothing, and the gaps that have no call to refuse behave as declared.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from bus.capabilities import Feature, Support
from bus.errors import NoResponders, RequestTimeout, UnsupportedFeature
from conformance._scenario import ConformanceFailure, expect, scenario
from conformance.context import Context


async def _refused(call: Callable[[], Awaitable[object]], feature: Feature) -> None:
    """``call()`` must raise UnsupportedFeature naming ``feature`` (when it is called
    or when it is awaited: both are call time)."""
    try:
        await call()
    except UnsupportedFeature as exc:
        expect(feature.value in str(exc), f"{feature.value}: error does not name it: {exc}")
        return
    except Exception as exc:
        raise ConformanceFailure(
            f"{feature.value} is declared unsupported but the call raised "
            f"{type(exc).__name__}, not UnsupportedFeature: {exc}"
        ) from exc
    raise ConformanceFailure(f"{feature.value} is declared unsupported but the call succeeded")


@scenario(timeout=90)
async def declared_gaps_are_enforced(ctx: Context) -> str:
    """Every feature is declared; each unsupported one raises UnsupportedFeature at call
    time (nothing is published), or, where no call can refuse, behaves as declared."""
    caps = ctx.capabilities
    for feature in Feature:
        cap = caps[feature]
        expect(bool(cap.how), f"{feature.value}: declared without saying how or why")
    gaps = [f for f in Feature if caps[f].support is Support.UNSUPPORTED]
    if not gaps:
        return f"no gaps: all {len(Feature)} features declared native or emulated"

    b = await ctx.connect()
    topic, group = ctx.topic("gaps"), ctx.group()
    await b.declare(topic, groups=[group])
    checked: list[str] = []
    for feature in gaps:
        if feature is Feature.PRIORITY:
            await _refused(lambda: b.publish(topic, b"p", priority=5), feature)
        elif feature is Feature.DELAY:
            await _refused(lambda: b.publish(topic, b"d", delay=1.0), feature)
        elif feature is Feature.REPLAY:
            await _refused(
                lambda: b.subscribe(topic, group=ctx.group(), start="earliest").open(), feature
            )
        elif feature is Feature.BROADCAST:
            await _refused(lambda: b.subscribe(topic).open(), feature)
        elif feature is Feature.REQUEST_REPLY:
            await _refused(lambda: b.request(topic, b"q", timeout=1.0), feature)
        elif feature is Feature.NO_RESPONDERS:
            # Nothing to refuse: a request nobody reads must end in RequestTimeout,
            # bounded by its timeout, never hang or claim a reply.
            lonely = ctx.topic("gaps-lonely")
            started = time.monotonic()
            try:
                await b.request(lonely, b"anyone?", timeout=1.0)
            except (RequestTimeout, NoResponders):
                pass
            else:
                raise ConformanceFailure("a request nobody reads got a reply")
            took = time.monotonic() - started
            expect(took < 1.0 + 10.0, f"request without responders took {took:.1f}s")
        else:
            continue  # lease, nack_delay, dead_letter, key_order: checked on a delivery
        checked.append(feature.value)

    # The refused calls above must not have published anything: the group sees only
    # the message sent now, and the delivery-level gaps are checked on it.
    async with b.subscribe(topic, group=group) as sub:
        sent = await b.publish(topic, b"only")
        (d,) = await ctx.collect(sub, 1, ack=False, timeout=30, what="messages")
        expect(d.message.id == sent, "a refused call published a message")
        if Feature.LEASE in gaps:
            # No lease to extend: in_progress() is a no-op, never an error, so a handler
            # reporting progress runs unchanged on every backend.
            await d.in_progress()
            checked.append(Feature.LEASE.value)
        if Feature.NACK_DELAY in gaps:
            await _refused(lambda: d.nack(delay=1.0), Feature.NACK_DELAY)
            checked.append(Feature.NACK_DELAY.value)
        if Feature.DEAD_LETTER in gaps:
            await _refused(lambda: d.dead_letter("gap check"), Feature.DEAD_LETTER)
            checked.append(Feature.DEAD_LETTER.value)
        await d.ack()
        await ctx.expect_nothing(sub, 1.0, "after the gap checks")
    unchecked = sorted({f.value for f in gaps} - set(checked))
    note = f"; no call to check for {', '.join(unchecked)}" if unchecked else ""
    return f"enforced: {', '.join(checked)}{note}"
