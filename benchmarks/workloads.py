"""The workloads, written once against :class:`benchmarks.drivers.base.Driver`.

Each workload returns :class:`Point` objects: one figure set per parameter
combination (size, rate, consumer count, ...), with one value per measured run.
Every workload runs ``warmup_runs`` discarded runs first, then ``runs`` measured
ones. Timed sections contain only the operation measured (a backlog is filled
before its drain is timed); the broker's CPU and memory are metered over the
same sections.

Latency is measured publish-to-handler against the *intended* send time of each
message (the schedule of a fixed-rate sender), so a sender that falls behind
shows up as latency instead of being hidden (coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bus
from benchmarks import heap
from benchmarks.brokercost import CostMeter, CostSample
from benchmarks.config import BenchConfig
from benchmarks.drivers.base import Consumer, Driver
from benchmarks.stats import LatencyHistogram

if TYPE_CHECKING:
    from benchmarks.progress import Progress

__all__ = ["WORKLOAD_FUNCS", "Context", "Point"]

_FILL_CHUNK = 500
_GROUP_SEQ = itertools.count(1)
#: Tags the payloads of each latency run (bytes 8-16), see ``_latency_run``.
_RUN_TAGS = itertools.count(1)
#: How long a latency run waits for its last message beyond 3x its duration; a message
#: not received by then is counted as that late (censored) and as lost.
LATENCY_GRACE_S = 15.0
_JOIN_TIMEOUT = 60.0


@dataclass
class Point:
    """One figure set: per-run values of each metric, broker cost per run."""

    workload: str
    params: dict[str, Any]
    runs: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    curve_ms: list[tuple[float, float]] | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    other_load_pct: list[float] = field(default_factory=list)
    steal_pct: list[float] = field(default_factory=list)

    def add(self, metrics: dict[str, float], cost: CostMeter) -> None:
        for name, value in metrics.items():
            self.runs.setdefault(name, []).append(value)
        if cost.sample is not None:
            self.cpu_s.append(cost.sample.cpu_s)
            self.rss_mb.append(cost.sample.peak_rss_mb)
        if cost.other_load_pct is not None:
            self.other_load_pct.append(cost.other_load_pct)
        if cost.steal_pct is not None:
            self.steal_pct.append(cost.steal_pct)


class Context:
    """What a workload gets: the config, the side's main driver (open), a way to
    open more connections, unique topic names, and the broker cost meter."""

    def __init__(
        self,
        config: BenchConfig,
        driver: Driver,
        new_driver: Callable[[], Driver],
        *,
        run_id: str,
        broker_proc: Any | None,
        progress: Progress | None = None,
        round_index: int = 0,
        carry: dict[Any, Any] | None = None,
        sizing: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        #: Which pass through the backend's workloads this is (see ``BenchConfig.rounds``).
        self.round_index = round_index
        #: State a workload keeps across rounds (one dict per side), e.g. the merged
        #: latency histogram.
        self.carry: dict[Any, Any] = carry if carry is not None else {}
        #: Calibrated message counts per figure, shared by both sides of a backend
        #: and by every round (see :meth:`count`).
        self.sizing: dict[str, int] = sizing if sizing is not None else {}
        self.driver = driver
        self._new_driver = new_driver
        self.run_id = run_id
        self.broker_proc = broker_proc
        self.progress = progress
        self.topics: list[str] = []
        self.groups: set[str] = set()
        self._extra: list[Driver] = []

    def topic(self, name: str) -> str:
        # a fresh topic per round: a deleted Kafka topic is not re-created at once
        suffix = f".r{self.round_index}" if self.round_index else ""
        topic = f"bench.{self.run_id}.{self.driver.side}.{name}{suffix}"
        self.topics.append(topic)
        return topic

    def group(self, name: str) -> str:
        """A group name unique to this run: Kafka group ids are global, and a group
        reused across topics would make every join wait for the old members."""
        unique = f"{name}-{self.run_id}-{next(_GROUP_SEQ)}"
        self.groups.add(unique)
        return unique

    def meter(self) -> CostMeter:
        return CostMeter(self.broker_proc)

    def detail(self, text: str) -> None:
        if self.progress is not None:
            self.progress.detail(text)

    def begin(self, text: str) -> None:
        """A run (or a timed stretch) starts: show ``text`` as its progress and, with
        ``freeze_heap``, collect and freeze the heap (:func:`benchmarks.heap.settle`),
        so that each run starts from the same collector state and its collections
        traverse only what it allocates. Called outside every clock."""
        self.detail(text)
        if self.config.freeze_heap:
            heap.settle()

    async def extra_driver(self) -> Driver:
        """Another open connection of the same side (closed after the workload)."""
        driver = self._new_driver()
        await driver.open()
        self._extra.append(driver)
        return driver

    async def aclose(self) -> None:
        await close_all(self._extra)
        self._extra.clear()

    @property
    def total_runs(self) -> int:
        return self.config.warmup_runs + self.config.runs

    def measured(self, i: int) -> bool:
        return i >= self.config.warmup_runs

    def count(self, key: str, base: int) -> int:
        """Messages per run of figure ``key`` on this backend: ``base`` until
        :meth:`calibrate` sized it."""
        return self.sizing.get(key, base)

    def unsized(self, key: str) -> bool:
        """Whether figure ``key`` is still to be sized on this backend."""
        cfg = self.config
        sizing = cfg.min_run_s > 0 or cfg.max_run_s > 0
        return sizing and not self.measured(0) and key not in self.sizing

    def calibrate(
        self,
        i: int,
        key: str,
        count: int,
        elapsed: float,
        cap: int | None = None,
        *,
        took: float | None = None,
        shrink: bool = True,
    ) -> None:
        """After run ``i`` of figure ``key`` (``count`` messages; its timed stretch
        lasted ``elapsed`` s, the whole run ``took`` s, by default the same): when it
        was the first warm-up run of the figure on this backend (or a sizing run
        before it, ``i`` = 0), size the later runs (both sides, every round):

        - timed stretch shorter than ``min_run_s``: proportionally more messages, at
          most ``max_run_scale`` times ``count``, at most what keeps the whole run
          within ``max_run_s`` (when set) and at most ``cap`` where the workload
          bounds its memory;
        - whole run longer than ``max_run_s`` (when set, and ``shrink``: a workload
          whose per-run percentiles need their samples passes False):
          proportionally fewer, at least ``count / max_run_scale``;
        - otherwise ``count``.

        Both sides must run the same count: their figures are compared as a ratio."""
        cfg = self.config
        if i != 0 or not self.unsized(key):
            return
        took = elapsed if took is None else took
        sized = count
        if cfg.min_run_s > 0 and elapsed < cfg.min_run_s:
            scale = min(cfg.max_run_scale, math.ceil(cfg.min_run_s / max(elapsed, 1e-6)))
            if cfg.max_run_s > 0:
                scale = max(1, min(scale, int(cfg.max_run_s / max(took, 1e-6))))
            sized = count * scale
            if cap is not None:
                sized = min(sized, max(count, cap))
        elif shrink and cfg.max_run_s > 0 and took > cfg.max_run_s:
            floor = math.ceil(count / cfg.max_run_scale)
            sized = max(floor, int(count * cfg.max_run_s / took))
        self.sizing[key] = sized

    def run_label(self, i: int) -> str:
        if i < self.config.warmup_runs:
            return f"warm-up {i + 1}/{self.config.warmup_runs}"
        return f"run {i - self.config.warmup_runs + 1}/{self.config.runs}"


# -- helpers ------------------------------------------------------------------------


async def close_all(closeables: Sequence[Consumer | Driver], timeout: float = 15.0) -> None:
    """Close each, bounded in time: a hung client close must not hang the run."""

    async def one(c: Consumer | Driver) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout):
                await c.close()

    await asyncio.gather(*(one(c) for c in closeables))


def payload(size: int) -> bytes:
    """Incompressible bytes of ``size`` (generated once per workload)."""
    return os.urandom(size)


async def fill(
    driver: Driver, topic: str, body: bytes, count: int, chunk: int = _FILL_CHUNK
) -> None:
    """Publish ``count`` copies of ``body`` (not timed: backlog for a drain)."""
    left = count
    while left > 0:
        n = min(chunk, left)
        await driver.publish_batch(topic, [body] * n)
        left -= n


async def open_group(consumers: Sequence[Consumer]) -> None:
    """Open the members of one group together (Kafka: one join, not one per member),
    then wait until a Kafka group is balanced (every member owns partitions)."""
    await asyncio.gather(*(c.open() for c in consumers))
    if len(consumers) > 1 and all(hasattr(c, "assignment") for c in consumers):
        deadline = time.monotonic() + _JOIN_TIMEOUT
        while True:
            parts = [c.assignment for c in consumers]  # type: ignore[attr-defined]
            owned = [p for p in parts if p]
            union = set().union(*parts)
            if len(owned) == min(len(consumers), len(union)) and sum(map(len, parts)) == len(union):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("kafka group did not balance in time")
            await asyncio.sleep(0.1)


async def _finish(tasks: Sequence[asyncio.Task[None]], grace: float = 5.0) -> list[Any]:
    """Let consumer tasks see the stop flag; cancel those still blocked after ``grace``."""
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def drain(
    consumers: Sequence[Consumer],
    expected: int,
    cost: CostMeter,
    timeout: float,
    *,
    start: Callable[[], Coroutine[Any, Any, None]] | None = None,
    on_payload: Callable[[bytes], bool | None] | None = None,
    open_first: bool = False,
) -> float:
    """Run ``consumers`` until ``expected`` payloads were handled and acked; return
    the seconds from start to the last ack. ``start`` (e.g. the publisher of a live
    workload) runs inside the timed section. A payload for which ``on_payload``
    returns False (a late message of an earlier run) is acked but not counted.
    ``open_first``: the consumers are opened inside the timed section, so that a
    client that starts receiving when it opens (the library's RabbitMQ subscription
    sends basic.consume) gets no head start over one that starts in ``run``."""
    stop = asyncio.Event()
    got = 0

    def on_message(body: bytes) -> None:
        nonlocal got
        if on_payload is not None and on_payload(body) is False:
            return
        got += 1
        if got >= expected:
            stop.set()

    with cost:
        t0 = time.monotonic_ns()
        if open_first:
            await open_group(consumers)
        for c in consumers:
            c.last_settle_ns = 0
        tasks = [asyncio.create_task(c.run(on_message, stop)) for c in consumers]
        waiter = asyncio.create_task(stop.wait())
        producer = asyncio.create_task(start()) if start is not None else None
        watched: set[asyncio.Task[Any]] = {waiter, *tasks}
        if producer is not None:
            watched.add(producer)
        try:
            deadline = time.monotonic() + timeout
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {got} of {expected} messages within {timeout:.0f}s")
                done, _ = await asyncio.wait(
                    watched, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is not waiter and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                    watched.discard(task)
            if producer is not None:
                await producer
        finally:
            stop.set()
            waiter.cancel()
            if producer is not None and not producer.done():
                producer.cancel()
            results = await _finish(tasks)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        t_end = max(c.last_settle_ns for c in consumers) or time.monotonic_ns()
    return max(t_end - t0, 1) / 1e9


# -- workloads ------------------------------------------------------------------------


async def confirmed_publish(ctx: Context) -> list[Point]:
    cfg = ctx.config
    d = ctx.driver
    base = cfg.confirmed_publish.count
    topic = ctx.topic("cp")
    await d.declare(topic, [ctx.group("g")])
    body = payload(cfg.message_size)
    point = Point("confirmed_publish", {"size": cfg.message_size, "count": base})
    for i in range(ctx.total_runs):
        ctx.begin(ctx.run_label(i))
        n = ctx.count("confirmed_publish", base)
        cost = ctx.meter()
        with cost:
            t0 = time.perf_counter()
            for _ in range(n):
                await d.publish(topic, body)
            elapsed = time.perf_counter() - t0
        ctx.calibrate(i, "confirmed_publish", n, elapsed)
        if ctx.measured(i):
            point.add({"msg_s": n / elapsed}, cost)
    point.params["count"] = ctx.count("confirmed_publish", base)
    return [point]


async def batched_publish(ctx: Context) -> list[Point]:
    cfg = ctx.config
    d = ctx.driver
    base, batch = cfg.batched_publish.count, cfg.batched_publish.batch
    topic = ctx.topic("bp")
    await d.declare(topic, [ctx.group("g")])
    body = payload(cfg.message_size)
    items = [body] * batch
    point = Point("batched_publish", {"size": cfg.message_size, "count": base, "batch": batch})
    for i in range(ctx.total_runs):
        ctx.begin(ctx.run_label(i))
        n = ctx.count("batched_publish", base)
        cost = ctx.meter()
        with cost:
            t0 = time.perf_counter()
            left = n
            while left > 0:
                k = min(batch, left)
                await d.publish_batch(topic, items if k == batch else items[:k])
                left -= k
            elapsed = time.perf_counter() - t0
        ctx.calibrate(i, "batched_publish", n, elapsed)
        if ctx.measured(i):
            point.add({"msg_s": n / elapsed}, cost)
    point.params["count"] = ctx.count("batched_publish", base)
    return [point]


async def _backlog_drains(
    ctx: Context,
    *,
    topic: str,
    group: str,
    members: int,
    count: int,
    size: int,
    point: Point,
    label: str = "",
    publish_timed: bool = False,
    cap: int | None = None,
) -> None:
    """Runs of: fill a backlog of ``count`` (timed when ``publish_timed``), then
    drain it with ``members`` consumers of ``group`` (timed). Where members join per
    run, the first warm-up run sizes the later ones (:meth:`Context.calibrate`, key:
    the point's workload and parameters).

    Where a group join is cheap, each run fills, joins, drains and leaves. Where it
    is not (Kafka), a member joined before the fill would prefetch the backlog while
    it is being published, so every run's backlog is published first, the group
    joins once and drains them all in one go; run ``i`` is the stretch from message
    ``i * count`` to ``(i + 1) * count`` (the warm-up run absorbs the start)."""
    cfg = ctx.config
    drivers = [ctx.driver] if members == 1 else [await ctx.extra_driver() for _ in range(members)]
    body = payload(size)
    await ctx.driver.declare(topic, [group])
    consume_key = "consume_msg_s" if publish_timed else "msg_s"

    key = f"{point.workload}/{sorted(point.params.items())}"

    async def timed_fill(n: int, into: str = topic) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        await fill(ctx.driver, into, body, n, chunk=cfg.batched_publish.batch)
        elapsed = time.perf_counter() - t0
        if not publish_timed:
            return {}, elapsed
        return {
            "publish_msg_s": n / elapsed,
            "publish_mb_s": n * size / elapsed / 2**20,
        }, elapsed

    def consumed(n: int, elapsed: float) -> dict[str, float]:
        out = {consume_key: n / elapsed}
        if publish_timed:
            out["consume_mb_s"] = n * size / elapsed / 2**20
        return out

    if ctx.driver.cheap_join:
        point.notes.append("consumers join per run, after the backlog is published, on the clock")
        for i in range(ctx.total_runs):
            ctx.begin(f"{label}{ctx.run_label(i)}")
            n = ctx.count(key, count)
            metrics, filled = await timed_fill(n)
            consumers = [dr.consumer(topic, group, cfg.prefetch) for dr in drivers]
            cost = ctx.meter()
            try:
                # opened on the clock: a cheap join costs a round trip or two, and
                # opening before it let a consumer that starts receiving at once
                # buffer part of the backlog before the clock started
                elapsed = await drain(consumers, n, cost, cfg.workload_timeout_s, open_first=True)
            finally:
                await close_all(consumers)
            timed = min(elapsed, filled) if publish_timed else elapsed
            ctx.calibrate(i, key, n, timed, cap, took=filled + elapsed)
            if ctx.measured(i):
                point.add({**metrics, **consumed(n, elapsed)}, cost)
        point.params["count"] = ctx.count(key, count)
        return

    point.notes.append(
        "group joins once: all runs' backlogs published first, then drained in one go "
        "(run i = messages i*count..(i+1)*count)"
    )
    if ctx.unsized(key):
        # a sizing drain of its own (topic, group, join) before the backlogs are
        # published: a stretch of the one long drain cannot size the others
        ctx.begin(f"{label}sizing run")
        sizing_topic = f"{topic}-sizing"
        ctx.topics.append(sizing_topic)
        sizing_group = ctx.group("sizing")
        await ctx.driver.declare(sizing_topic, [sizing_group])
        _, filled = await timed_fill(count, sizing_topic)
        consumers = [dr.consumer(sizing_topic, sizing_group, cfg.prefetch) for dr in drivers]
        await open_group(consumers)
        try:
            elapsed = await drain(consumers, count, ctx.meter(), cfg.workload_timeout_s)
        finally:
            await close_all(consumers)
        timed = min(elapsed, filled) if publish_timed else elapsed
        ctx.calibrate(0, key, count, timed, cap, took=filled + elapsed)
    count = ctx.count(key, count)
    point.params["count"] = count
    fills = []
    for i in range(ctx.total_runs):
        ctx.begin(f"{label}fill {i + 1}/{ctx.total_runs}")
        fills.append(await timed_fill(count))
    consumers = [dr.consumer(topic, group, cfg.prefetch) for dr in drivers]
    ctx.detail(f"{label}joining")
    await open_group(consumers)
    marks: list[int] = []
    handled = 0
    now = time.monotonic_ns

    def on_payload(_: bytes) -> None:
        nonlocal handled
        handled += 1
        if handled % count == 0:
            marks.append(now())

    ctx.begin(f"{label}draining {ctx.total_runs} x {count}")
    cost = ctx.meter()
    try:
        t_start = now()
        await drain(
            consumers,
            count * ctx.total_runs,
            cost,
            cfg.workload_timeout_s,
            on_payload=on_payload,
        )
    finally:
        await close_all(consumers)
    bounds = [t_start, *marks]
    share = CostMeter(None)
    share.other_load_pct = cost.other_load_pct
    share.steal_pct = cost.steal_pct
    if cost.sample is not None:
        share.sample = CostSample(
            round(cost.sample.cpu_s / ctx.total_runs, 3), cost.sample.peak_rss_mb
        )
    for i in range(ctx.total_runs):
        elapsed = max(bounds[i + 1] - bounds[i], 1) / 1e9
        if ctx.measured(i):
            metrics, _ = fills[i]
            point.add({**metrics, **consumed(count, elapsed)}, share)


async def consume_ack(ctx: Context) -> list[Point]:
    cfg = ctx.config
    n = cfg.consume_ack.count
    point = Point("consume_ack", {"size": cfg.message_size, "count": n, "prefetch": cfg.prefetch})
    await _backlog_drains(
        ctx,
        topic=ctx.topic("ca"),
        group=ctx.group("g"),
        members=1,
        count=n,
        size=cfg.message_size,
        point=point,
    )
    return [point]


async def scaling(ctx: Context) -> list[Point]:
    cfg = ctx.config
    n = cfg.scaling.count
    points = []
    for k in cfg.scaling.consumers:
        point = Point("scaling", {"consumers": k, "size": cfg.message_size, "count": n})
        await _backlog_drains(
            ctx,
            topic=ctx.topic(f"sc{k}"),
            group=ctx.group("g"),
            members=k,
            count=n,
            size=cfg.message_size,
            point=point,
            label=f"{k} consumers ",
        )
        points.append(point)
    return points


async def sizes(ctx: Context) -> list[Point]:
    cfg = ctx.config
    points = []
    for size in cfg.sizes.sizes:
        n = max(1, min(cfg.sizes.count, cfg.sizes.bytes_budget // size))
        point = Point("sizes", {"size": size, "count": n})
        await _backlog_drains(
            ctx,
            topic=ctx.topic(f"sz{size}"),
            group=ctx.group("g"),
            members=1,
            count=n,
            size=size,
            point=point,
            label=f"{size} B ",
            publish_timed=True,
            cap=cfg.sizes.bytes_budget // size,
        )
        points.append(point)
    return points


async def fanout(ctx: Context) -> list[Point]:
    cfg = ctx.config
    groups = [ctx.group(f"g{i}") for i in range(cfg.fanout.groups)]
    base = cfg.fanout.count
    topic = ctx.topic("fo")
    d = ctx.driver
    await d.declare(topic, groups)
    drivers = [await ctx.extra_driver() for _ in groups]
    consumers = [dr.consumer(topic, g, cfg.prefetch) for dr, g in zip(drivers, groups, strict=True)]
    await asyncio.gather(*(c.open() for c in consumers))
    body = payload(cfg.message_size)
    batch = cfg.batched_publish.batch
    point = Point(
        "fanout", {"groups": len(groups), "size": cfg.message_size, "count": base, "batch": batch}
    )
    point.notes.append("live: consumers running while the batched publisher sends")
    n = base

    async def send() -> None:
        await fill(d, topic, body, n, chunk=batch)

    try:
        for i in range(ctx.total_runs):
            ctx.begin(ctx.run_label(i))
            n = ctx.count("fanout", base)
            cost = ctx.meter()
            elapsed = await drain(
                consumers, n * len(groups), cost, cfg.workload_timeout_s, start=send
            )
            ctx.calibrate(i, "fanout", n, elapsed)
            if ctx.measured(i):
                point.add({"deliveries_s": n * len(groups) / elapsed, "msg_s": n / elapsed}, cost)
    finally:
        await close_all(consumers)
    point.params["count"] = ctx.count("fanout", base)
    return [point]


async def paced_send(
    driver: Driver,
    topic: str,
    *,
    rate: float,
    count: int,
    t0_ns: int,
    size: int,
    max_in_flight: int,
    tag: bytes = bytes(8),
) -> float:
    """Send ``count`` messages at ``rate``/s from ``t0_ns``; each payload starts with
    its intended send time (8 bytes) and ``tag`` (8 bytes: which run it belongs to).
    Everything due at a tick goes in one publish call, with up to ``max_in_flight``
    calls outstanding. Returns the achieved send rate."""
    interval = 1e9 / rate
    filler = tag + bytes(max(0, size - 16))
    slots = asyncio.Semaphore(max_in_flight)
    pending: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []

    async def send(batch: list[bytes]) -> None:
        try:
            if len(batch) == 1:
                await driver.publish(topic, batch[0])
            else:
                await driver.publish_batch(topic, batch)
        except Exception as exc:
            failures.append(exc)
        finally:
            slots.release()

    now = time.monotonic_ns
    i = 0
    while i < count:
        t = now()
        due = min(count, int((t - t0_ns) / interval) + 1) if t >= t0_ns else 0
        if due <= i:
            await asyncio.sleep(max(0.0, (t0_ns + i * interval - t) / 1e9))
            continue
        batch = [(t0_ns + int(j * interval)).to_bytes(8, "big") + filler for j in range(i, due)]
        i = due
        await slots.acquire()
        task = asyncio.create_task(send(batch))
        pending.add(task)
        task.add_done_callback(pending.discard)
        if failures:
            break
    if pending:
        await asyncio.gather(*pending)
    if failures:
        raise failures[0]
    elapsed = (now() - t0_ns) / 1e9
    return count / max(elapsed, 1e-9)


async def _latency_run(
    ctx: Context,
    consumer: Consumer,
    topic: str,
    *,
    rate: float,
    duration_s: float,
    merged: LatencyHistogram | None,
    cost: CostMeter | None = None,
) -> dict[str, float]:
    cfg = ctx.config
    count = max(1, int(rate * duration_s))
    samples: list[int] = []
    now = time.monotonic_ns
    append = samples.append
    # Runs share one topic and consumer: a message of an earlier run that arrives
    # late must neither count towards this run nor lend it its latency.
    tag = next(_RUN_TAGS).to_bytes(8, "big")

    def on_payload(body: bytes) -> bool:
        if body[8:16] != tag:
            return False
        append(now() - int.from_bytes(body[:8], "big"))
        return True

    t0 = now() + 5_000_000
    sent_rate = 0.0

    async def send() -> None:
        nonlocal sent_rate
        sent_rate = await paced_send(
            ctx.driver,
            topic,
            rate=rate,
            count=count,
            t0_ns=t0,
            size=cfg.message_size,
            max_in_flight=cfg.latency.max_in_flight,
            tag=tag,
        )

    cost = cost or CostMeter(None)
    timeout = duration_s * 3 + LATENCY_GRACE_S
    lost = 0
    try:
        await drain([consumer], count, cost, timeout, start=send, on_payload=on_payload)
    except TimeoutError:
        lost = count - len(samples)
        # A message not received is at least this late: counted at the timeout
        # (censored), so a run that loses messages cannot report a low latency, and
        # one that receives nothing does not report 0 ms.
        samples += [int(timeout * 1e9)] * lost
    hist = LatencyHistogram()
    hist.record_ns(samples)
    if merged is not None:
        merged.record_ns(samples)
    out: dict[str, float] = {f"{k}_ms": v for k, v in hist.percentiles_ms().items()}
    out["sent_rate"] = sent_rate
    out["lost"] = float(lost)
    return out


async def latency(ctx: Context) -> list[Point]:
    cfg = ctx.config
    lc = cfg.latency
    topic = ctx.topic("lat")
    group = ctx.group("g")
    await ctx.driver.declare(topic, [group])
    consumer_driver = await ctx.extra_driver()
    consumer = consumer_driver.consumer(topic, group, cfg.prefetch)
    await consumer.open()
    points = []
    try:
        for rate in lc.rates:
            point = Point(
                "latency", {"rate": rate, "size": cfg.message_size, "duration_s": lc.duration_s}
            )
            # one histogram per rate over every round: the curve covers all runs
            merged = ctx.carry.setdefault(("latency", rate), LatencyHistogram())
            if lc.warmup_s > 0:
                ctx.begin(f"{rate}/s warm-up")
                await _latency_run(
                    ctx, consumer, topic, rate=rate, duration_s=lc.warmup_s, merged=None
                )
            runs = lc.runs or cfg.runs
            for i in range(runs):
                ctx.begin(f"{rate}/s run {i + 1}/{runs}")
                cost = ctx.meter()
                metrics = await _latency_run(
                    ctx,
                    consumer,
                    topic,
                    rate=rate,
                    duration_s=lc.duration_s,
                    merged=merged,
                    cost=cost,
                )
                point.add(metrics, cost)
            point.curve_ms = merged.curve_ms()
            point.notes.append("latency from intended send time; curve merges all runs")
            points.append(point)
        if lc.ramp.enabled and ctx.round_index == 0:
            points.append(await _ramp(ctx, consumer, topic))
    finally:
        await close_all([consumer])
    return points


async def _ramp(ctx: Context, consumer: Consumer, topic: str) -> Point:
    ramp = ctx.config.latency.ramp
    point = Point(
        "latency_ramp",
        {"start": ramp.start, "factor": ramp.factor, "p99_limit_ms": ramp.p99_limit_ms},
    )
    best = 0.0
    rate = float(ramp.start)
    steps = []
    while rate <= ramp.max_rate:
        ctx.begin(f"ramp {rate:.0f}/s")
        m = await _latency_run(ctx, consumer, topic, rate=rate, duration_s=ramp.step_s, merged=None)
        ok = m["p99_ms"] <= ramp.p99_limit_ms and m["lost"] == 0 and m["sent_rate"] >= 0.95 * rate
        steps.append(f"{rate:.0f}/s p99 {m['p99_ms']:.1f} ms {'ok' if ok else 'FAIL'}")
        if not ok:
            break
        best = rate
        rate = round(rate * ramp.factor)
    point.runs["max_rate"] = [best]
    point.notes.append("one ramp (not repeated): " + "; ".join(steps))
    return point


def _job_payload(seq: int, size: int) -> bytes:
    return (
        time.monotonic_ns().to_bytes(8, "big") + seq.to_bytes(8, "big") + bytes(max(0, size - 16))
    )


async def _publish_jobs(driver: Driver, topic: str, count: int, publishers: int, size: int) -> None:
    async def one(start: int) -> None:
        for seq in range(start, count, publishers):
            await driver.publish(topic, _job_payload(seq, size))

    await asyncio.gather(*(one(p) for p in range(publishers)))


async def job_roundtrip(ctx: Context) -> list[Point]:
    from benchmarks.drivers.library import LibraryDriver

    cfg = ctx.config
    jc = cfg.job_roundtrip
    topic = ctx.topic("job")
    group = ctx.group("workers")
    await ctx.driver.declare(topic, [group])
    point = Point(
        "job_roundtrip",
        {
            "count": jc.count,
            "publishers": jc.publishers,
            "concurrency": jc.concurrency,
            "size": cfg.message_size,
        },
    )
    now = time.monotonic_ns
    state: dict[str, Any] = {}

    def reset(expected: int) -> None:
        state.update(got=0, lat=[], stop=asyncio.Event(), expected=expected, last=0)

    def done(body: bytes) -> None:
        t = now()
        state["lat"].append(t - int.from_bytes(body[:8], "big"))
        state["got"] += 1
        state["last"] = t
        if state["got"] >= state["expected"]:
            state["stop"].set()

    merged = LatencyHistogram()
    # Not sized by the run-length bounds (min_run_s / max_run_s): the publishers
    # outrun a worker on most backends, so a job waits behind the burst before it, and
    # the p50/p99 grow with the count. Sized from a noisy warm-up, the count moved
    # between runs of the same code (memory:// 800 / 3,200 jobs: p50 14 / 72 ms).
    n = jc.count

    async def measure(i: int, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        cost = ctx.meter()
        with cost:
            t0 = now()
            publisher = asyncio.create_task(run())
            try:
                async with asyncio.timeout(cfg.workload_timeout_s):
                    await state["stop"].wait()
                    await publisher
            finally:
                publisher.cancel()
        elapsed = max(state["last"] - t0, 1) / 1e9
        if ctx.measured(i):
            hist = LatencyHistogram()
            hist.record_ns(state["lat"])
            merged.record_ns(state["lat"])
            pct = hist.percentiles_ms()
            point.add({"jobs_s": n / elapsed, "p50_ms": pct["p50"], "p99_ms": pct["p99"]}, cost)

    def start(i: int) -> None:
        ctx.begin(ctx.run_label(i))
        reset(n)

    async def publish() -> None:
        await _publish_jobs(ctx.driver, topic, n, jc.publishers, cfg.message_size)

    if isinstance(ctx.driver, LibraryDriver):
        b = ctx.driver.bus
        caps = b.capabilities
        backoff = jc.backoff_s if caps.supports(bus.Feature.NACK_DELAY) else 0.0
        retry = bus.Retry(max_attempts=jc.max_attempts, backoff=bus.Fixed(backoff))
        failed: set[int] = set()

        async def handle(delivery: bus.Delivery) -> None:
            body = delivery.message.data
            if jc.fail_every and delivery.attempt == 1:
                seq = int.from_bytes(body[8:16], "big")
                if seq % jc.fail_every == 0 and seq not in failed:
                    failed.add(seq)
                    raise RuntimeError("simulated transient failure")
            done(body)

        worker = b.consume(
            topic,
            handle,
            group=group,
            concurrency=jc.concurrency,
            retry=retry,
            dead_letter=caps.supports(bus.Feature.DEAD_LETTER),
            prefetch=max(cfg.prefetch, 2 * jc.concurrency),
        )
        point.notes.append(
            f"bus.consume concurrency={jc.concurrency}, Retry(max_attempts={jc.max_attempts}, "
            f"Fixed({backoff})), fail_every={jc.fail_every}"
        )
        async with worker:
            for i in range(ctx.total_runs):
                start(i)
                failed.clear()
                await measure(i, publish)
    else:
        consumer_driver = await ctx.extra_driver()
        consumer = consumer_driver.consumer(topic, group, cfg.prefetch)
        await consumer.open()
        point.notes.append("raw consume loop (no retry runtime), same publishers")
        try:
            for i in range(ctx.total_runs):
                start(i)
                stop = state["stop"]
                task = asyncio.create_task(consumer.run(done, stop))
                try:
                    await measure(i, publish)
                finally:
                    stop.set()
                    await task
        finally:
            await close_all([consumer])
    point.curve_ms = merged.curve_ms()
    return [point]


async def rpc(ctx: Context) -> list[Point]:
    from benchmarks.drivers.library import LibraryDriver

    if not isinstance(ctx.driver, LibraryDriver):
        return []
    cfg = ctx.config
    b = ctx.driver.bus
    point = Point("rpc", {"count": cfg.rpc.count, "size": cfg.message_size})
    if not b.capabilities.supports(bus.Feature.REQUEST_REPLY):
        point.error = "request/reply unsupported: " + b.capabilities[bus.Feature.REQUEST_REPLY].how
        return [point]
    topic = ctx.topic("rpc")
    group = ctx.group("rpc")
    await b.declare(topic, groups=[group])
    body = payload(cfg.message_size)

    async def echo(data: bytes) -> bytes:
        return data

    worker = b.consume(
        topic, echo, group=group, concurrency=1, retry=bus.Retry(max_attempts=1), dead_letter=False
    )
    merged = LatencyHistogram()
    now = time.monotonic_ns
    async with worker:
        for i in range(ctx.total_runs):
            ctx.begin(ctx.run_label(i))
            n = ctx.count("rpc", cfg.rpc.count)
            samples = []
            cost = ctx.meter()
            with cost:
                t0 = now()
                for _ in range(n):
                    t = now()
                    await b.request(topic, body, timeout=cfg.rpc.timeout_s)
                    samples.append(now() - t)
                elapsed = (now() - t0) / 1e9
            # per-run p99 of sequential round trips: shrinking would leave it a max
            ctx.calibrate(i, "rpc", n, elapsed, shrink=False)
            if ctx.measured(i):
                hist = LatencyHistogram()
                hist.record_ns(samples)
                merged.record_ns(samples)
                pct = hist.percentiles_ms()
                point.add(
                    {"req_s": n / elapsed, "p50_ms": pct["p50"], "p99_ms": pct["p99"]},
                    cost,
                )
    point.curve_ms = merged.curve_ms()
    point.params["count"] = ctx.count("rpc", cfg.rpc.count)
    point.notes.append("sequential bus.request to a bus.consume echo handler")
    return [point]


WORKLOAD_FUNCS: dict[str, Callable[[Context], Awaitable[list[Point]]]] = {
    "confirmed_publish": confirmed_publish,
    "batched_publish": batched_publish,
    "consume_ack": consume_ack,
    "latency": latency,
    "fanout": fanout,
    "scaling": scaling,
    "sizes": sizes,
    "job_roundtrip": job_roundtrip,
    "rpc": rpc,
}
