"""Run every workload on every target and collect :class:`benchmarks.results.Results`.

Targets come in pairs per broker: the library (``bus``) and the broker's raw client
(``raw``), on the same URL with the same settings. To keep the library/raw ratio
fair on a noisy shared machine, the two sides of a pair run back to back for each
workload (raw, then bus) instead of one whole side after the other. With several
rounds, every backend is connected first and the rounds are the outer loop (see
:func:`run_benchmarks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from benchmarks.brokercost import find_listener
from benchmarks.config import BenchConfig, session_timeout_for
from benchmarks.drivers.base import Driver, Side
from benchmarks.environment import describe_environment, load_average
from benchmarks.pollidle import PollIdle
from benchmarks.probe import cpu_probe
from benchmarks.progress import Progress
from benchmarks.results import (
    RATIO_TARGETS,
    PointResult,
    Probe,
    Ratio,
    Results,
    TargetResult,
)
from benchmarks.stats import summarize
from benchmarks.workloads import WORKLOAD_FUNCS, Context, Point

__all__ = [
    "KINDS",
    "BackendPlan",
    "backend_of",
    "compute_ratios",
    "merge_rounds",
    "plan_all",
    "plan_urls",
    "round_configs",
    "run_benchmarks",
]

KINDS = ("redis", "rabbitmq", "nats", "kafka")

_SCHEME_KIND = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
    "tls": "nats",
    "kafka": "kafka",
}
_DEFAULT_PORTS = {"redis": 6379, "rabbitmq": 5672, "nats": 4222, "kafka": 9092}
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

#: The headline metric of each workload and whether higher is better.
MAIN_METRIC: dict[str, tuple[str, str]] = {
    "confirmed_publish": ("msg_s", "higher"),
    "batched_publish": ("msg_s", "higher"),
    "consume_ack": ("msg_s", "higher"),
    "latency": ("p99_ms", "lower"),
    "latency_ramp": ("max_rate", "higher"),
    "fanout": ("deliveries_s", "higher"),
    "scaling": ("msg_s", "higher"),
    "sizes": ("consume_msg_s", "higher"),
    "job_roundtrip": ("jobs_s", "higher"),
    "rpc": ("p99_ms", "lower"),
}


def backend_of(url: str) -> str:
    """``redis://...`` -> ``redis``; ``amqp://...`` -> ``rabbitmq``; unknown -> the scheme."""
    scheme = urlsplit(url).scheme.lower()
    return _SCHEME_KIND.get(scheme, scheme)


@dataclass
class BackendPlan:
    """One backend to measure: where it is and how it was found."""

    backend: str
    url: str
    origin: str = "url"
    reason: str = ""
    """Why it cannot be measured (provisioning failed), else empty."""
    broker_handle: Any = field(default=None, repr=False)

    @property
    def local_port(self) -> int | None:
        if self.backend == "memory":
            return None
        parts = urlsplit(self.url)
        host = (parts.hostname or "").lower()
        if host not in _LOCAL_HOSTS:
            return None
        try:
            return parts.port or _DEFAULT_PORTS.get(self.backend)
        except ValueError:
            return None


def plan_urls(urls: Sequence[str]) -> list[BackendPlan]:
    """Plans for URLs given on the command line; a bare kind name (``redis``) is
    provisioned like ``--all`` does."""
    plans = []
    for url in urls:
        if "://" not in url and url in KINDS:
            plans.append(_provision(url))
        elif backend_of(url) == "memory":
            plans.append(BackendPlan("memory", url, origin="in-process"))
        else:
            plans.append(BackendPlan(backend_of(url), url))
    return plans


def _provision(kind: str) -> BackendPlan:
    from conformance.brokers import ProvisioningError, find_or_start

    try:
        broker = find_or_start(kind)  # type: ignore[arg-type]
    except ProvisioningError as exc:
        return BackendPlan(kind, f"{kind}://", origin="unavailable", reason=str(exc))
    return BackendPlan(kind, broker.url, origin=broker.origin, broker_handle=broker)


def plan_all() -> list[BackendPlan]:
    """memory:// plus every broker kind the provisioning can bring up."""
    return [BackendPlan("memory", "memory://", origin="in-process")] + [
        _provision(kind) for kind in KINDS
    ]


# -- drivers -------------------------------------------------------------------------


def raw_factory(backend: str, url: str, config: BenchConfig) -> Callable[[], Driver] | None:
    """A constructor of the raw-client driver for ``backend`` (None for memory)."""
    if backend == "redis":
        from benchmarks.drivers.raw_redis import RedisRawDriver

        return lambda: RedisRawDriver(backend, url)
    if backend == "rabbitmq":
        from benchmarks.drivers.raw_rabbitmq import RabbitRawDriver

        return lambda: RabbitRawDriver(backend, url, config.rabbitmq.queue_type)
    if backend == "nats":
        from benchmarks.drivers.raw_nats import NatsRawDriver

        return lambda: NatsRawDriver(backend, url, config.nats.storage)
    if backend == "kafka":
        from benchmarks.drivers.raw_kafka import KafkaRawDriver

        return lambda: KafkaRawDriver(backend, url, config.kafka)
    return None


def shared_options(backend: str, url: str, config: BenchConfig) -> dict[str, Any]:
    """The raw side's settings that the library backend also takes, under the same
    option name (e.g. Kafka ``fetch_max_wait_ms``, NATS ``storage``), so both sides
    run with the same settings wherever the backend exposes them."""
    section: dict[str, Any] = {
        "kafka": config.kafka.model_dump(),
        "rabbitmq": config.rabbitmq.model_dump(),
        "nats": config.nats.model_dump(),
    }.get(backend, {})
    if not section:
        return {}
    try:
        from bus.registry import resolve

        fields = set(resolve(url).Options.model_fields)
    except Exception:  # the backend may not be installed yet
        return {}
    # None: decided per broker (or the backend's default where the run did not)
    return {name: v for name, v in section.items() if name in fields and v is not None}


def library_factory(backend: str, url: str, config: BenchConfig) -> Callable[[], Driver]:
    from benchmarks.drivers.library import LibraryDriver

    options = {
        **shared_options(backend, url, config),
        **config.library_options.get(backend, {}),
    }
    return lambda: LibraryDriver(backend, url, options)


def _broker_info_from_process(proc: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"local": True}
    try:
        cmdline = proc.cmdline()
        out["pid"] = proc.pid
        out["process"] = proc.name()
    except Exception:
        return out
    joined = " ".join(cmdline)
    if "tansu" in joined:
        match = re.search(r"tansu-v?(\d+\.\d+\.\d+)", joined)
        storage = "?"
        if "--storage-engine" in cmdline:
            storage = cmdline[cmdline.index("--storage-engine") + 1].split(":", 1)[0]
        out["implementation"] = f"Tansu (Kafka protocol, {storage} storage)"
        out["version"] = match.group(1) if match else "?"
    return out


def local_broker(plan: BackendPlan) -> tuple[Any, dict[str, Any]]:
    """The process of ``plan``'s broker where it listens on this machine (else None),
    and what is known of the broker (``local``, ``implementation``, ``version``...)."""
    port = plan.local_port
    proc = find_listener(port) if port and not plan.reason else None
    broker: dict[str, Any] = {"local": proc is not None}
    if plan.backend == "memory":
        broker = {"implementation": "in-process (backends.memory)", "local": True}
    elif proc is not None:
        broker.update(_broker_info_from_process(proc))
    return proc, broker


def for_broker(config: BenchConfig, plan: BackendPlan, broker: dict[str, Any]) -> BenchConfig:
    """``config`` with the settings decided per broker (Kafka's session timeout)."""
    if plan.backend != "kafka":
        return config
    kafka = session_timeout_for(config.kafka, str(broker.get("implementation", "")))
    return config.model_copy(update={"kafka": kafka})


# -- running -------------------------------------------------------------------------


@dataclass
class _Side:
    side: Side
    factory: Callable[[], Driver]
    target: TargetResult
    driver: Driver | None = None


def _headline(points: Sequence[Point]) -> str:
    for point in points:
        if point.error:
            return f"error: {point.error[:120]}"
        metric, _ = MAIN_METRIC.get(point.workload, ("", ""))
        values = point.runs.get(metric)
        if values:
            s = summarize(values)
            extra = ", ".join(f"{k}={v}" for k, v in point.params.items() if k in _SHOWN_PARAMS)
            return f"{metric} {s.fmt(1 if s.median < 100 else 0)}" + (
                f" [{extra}]" if extra else ""
            )
    return "n/a"


_SHOWN_PARAMS = ("rate", "consumers", "size", "groups")


async def _cleanup(ctx: Context, side: _Side, backend: str, progress: Progress) -> None:
    """Delete what the workload left on the broker: each side through its own client
    (the library side through ``Backend.delete_topic``)."""
    driver = side.driver
    assert driver is not None
    try:
        await driver.cleanup(ctx.topics, sorted(ctx.groups))
    except Exception as exc:
        progress.note(f"cleanup on {backend}/{side.side} failed: {type(exc).__name__}: {exc}")


@dataclass
class _Backend:
    """One backend's sides (library and raw client) across the rounds of a run."""

    plan: BackendPlan
    sides: list[_Side]
    proc: Any
    #: per target id: the points of every round so far, and what rounds carry over
    collected: dict[str, list[Point]] = field(init=False)
    carry: dict[str, dict[Any, Any]] = field(init=False)
    #: message counts calibrated per figure, the same for both sides (Context.count)
    sizing: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.collected = {side.target.id: [] for side in self.sides}
        self.carry = {side.target.id: {} for side in self.sides}


async def _open_backend(
    plan: BackendPlan, config: BenchConfig, progress: Progress, targets: list[TargetResult]
) -> _Backend | None:
    """Connect both sides of ``plan`` (None when the backend is not measured)."""
    from bus import redact_url

    proc, broker = local_broker(plan)
    config = for_broker(config, plan, broker)

    sides: list[_Side] = []
    raw = raw_factory(plan.backend, plan.url, config) if config.raw else None
    if raw is not None:
        sides.append(
            _Side(
                "raw",
                raw,
                TargetResult(
                    id=f"{plan.backend}/raw",
                    backend=plan.backend,
                    side="raw",
                    url=redact_url(plan.url),
                    origin=plan.origin,
                ),
            )
        )
    sides.append(
        _Side(
            "bus",
            library_factory(plan.backend, plan.url, config),
            TargetResult(
                id=f"{plan.backend}/bus",
                backend=plan.backend,
                side="bus",
                url=redact_url(plan.url),
                origin=plan.origin,
            ),
        )
    )
    for side in sides:
        targets.append(side.target)
    if plan.reason:
        for side in sides:
            side.target.status = "skipped"
            side.target.reason = plan.reason
        progress.done += len(sides) * sum(len(c.workloads) for c in round_configs(config))
        progress.note(f"{plan.backend}: not measured: {plan.reason.splitlines()[0]}")
        return None

    for side in sides:
        driver = side.factory()
        try:
            async with asyncio.timeout(60):
                await driver.open()
        except Exception as exc:
            side.target.status = "error"
            side.target.reason = f"cannot connect: {type(exc).__name__}: {exc}"
            progress.note(f"{side.target.id}: {side.target.reason}")
            with contextlib.suppress(Exception):
                await driver.close()
            continue
        side.driver = driver
        with contextlib.suppress(Exception):
            info = await driver.broker_info()
            for key, value in info.items():
                broker.setdefault(key, value)
    for side in sides:
        side.target.broker = broker

    return _Backend(plan, sides, proc)


async def _run_round(
    b: _Backend,
    round_config: BenchConfig,
    round_index: int,
    rounds: int,
    run_id: str,
    progress: Progress,
) -> None:
    """One pass through the round's workloads, both sides of each in turn."""
    started = time.monotonic()
    for workload in round_config.workloads:
        for side in b.sides:
            label = f"{side.target.id:<14} {workload}"
            if rounds > 1:
                label += f" (round {round_index + 1}/{rounds})"
            progress.start(label)
            if side.driver is None:
                progress.finish(f"skipped ({side.target.reason[:80]})")
                continue
            if workload == "rpc" and side.side == "raw":
                progress.finish("n/a (library only)")
                continue
            ctx = Context(
                round_config,
                side.driver,
                side.factory,
                run_id=run_id,
                broker_proc=b.proc,
                progress=progress,
                round_index=round_index,
                carry=b.carry[side.target.id],
                sizing=b.sizing,
            )
            func = WORKLOAD_FUNCS[workload]
            began = time.monotonic()
            try:
                async with asyncio.timeout(round_config.workload_timeout_s * 2):
                    result = await func(ctx)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}".rstrip(": ")
                result = [Point(workload, {}, error=message)]
            finally:
                await ctx.aclose()
                await _cleanup(ctx, side, b.plan.backend, progress)
                spent_here = side.target.workload_s.get(workload, 0.0)
                spent_here += time.monotonic() - began
                side.target.workload_s[workload] = round(spent_here, 1)
            b.collected[side.target.id].extend(result)
            progress.finish(_headline(result))
    spent = time.monotonic() - started
    for side in b.sides:
        side.target.duration_s = round(side.target.duration_s + spent, 1)


async def _close_backend(b: _Backend, points: list[PointResult]) -> None:
    """Merge each side's rounds into its figures and disconnect."""
    for side in b.sides:
        for point in merge_rounds(b.collected[side.target.id]):
            points.append(_summarize(point, side.target))
        if side.driver is not None:
            side.target.settings = side.driver.settings()
            with contextlib.suppress(Exception):
                await side.driver.close()


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def round_configs(config: BenchConfig) -> list[BenchConfig]:
    """The config of each round: ``runs`` (and the latency runs) split over
    ``rounds``; a round left with no latency run leaves the latency workload out."""
    rounds = min(config.rounds, config.runs)
    out = []
    for r in range(rounds):
        latency_runs = config.latency.runs
        workloads = list(config.workloads)
        if latency_runs is not None:
            latency_runs = _share(latency_runs, rounds, r)
            if latency_runs == 0:
                workloads = [w for w in workloads if w != "latency"]
                latency_runs = 1
        out.append(
            config.model_copy(
                update={
                    "runs": _share(config.runs, rounds, r),
                    "workloads": workloads,
                    "latency": config.latency.model_copy(update={"runs": latency_runs}),
                }
            )
        )
    return out


def merge_rounds(points: Sequence[Point]) -> list[Point]:
    """One point per (workload, parameters): the runs of every round together, in
    the order measured; the latest latency curve (it merges all rounds so far); an
    error from any round."""
    merged: dict[tuple[str, str], Point] = {}
    for point in points:
        key = (point.workload, repr(sorted(point.params.items())))
        into = merged.get(key)
        if into is None:
            merged[key] = copy.deepcopy(point)  # the first round is the accumulator
            continue
        for name, values in point.runs.items():
            into.runs.setdefault(name, []).extend(values)
        into.cpu_s.extend(point.cpu_s)
        into.rss_mb.extend(point.rss_mb)
        into.other_load_pct.extend(point.other_load_pct)
        into.steal_pct.extend(point.steal_pct)
        into.curve_ms = point.curve_ms or into.curve_ms
        into.notes.extend(n for n in point.notes if n not in into.notes)
        into.error = into.error or point.error
    return list(merged.values())


def _summarize(point: Point, target: TargetResult) -> PointResult:
    return PointResult(
        target=target.id,
        backend=target.backend,
        side=target.side,
        workload=point.workload,
        params=point.params,
        metrics={name: summarize(values) for name, values in point.runs.items() if values},
        broker_cpu_s=summarize(point.cpu_s) if point.cpu_s else None,
        broker_peak_rss_mb=summarize(point.rss_mb) if point.rss_mb else None,
        other_load_pct=summarize(point.other_load_pct) if point.other_load_pct else None,
        steal_pct=summarize(point.steal_pct) if point.steal_pct else None,
        curve_ms=point.curve_ms,
        notes=point.notes,
        error=point.error,
    )


def compute_ratios(points: Sequence[PointResult]) -> list[Ratio]:
    """Library / raw of each workload's headline metric, per backend and parameters."""
    by_key: dict[tuple[str, str, str], dict[str, PointResult]] = {}
    for p in points:
        if p.error:
            continue
        key = (p.backend, p.workload, repr(sorted(p.params.items())))
        by_key.setdefault(key, {})[p.side] = p
    ratios = []
    for (backend, workload, _), pair in by_key.items():
        if "bus" not in pair or "raw" not in pair:
            continue
        metrics = [MAIN_METRIC.get(workload, ("", "higher"))]
        if workload == "sizes":
            metrics.append(("publish_msg_s", "higher"))
        for metric, better in metrics:
            b, r = pair["bus"].metric(metric), pair["raw"].metric(metric)
            if b is None or r is None or not r.median or not r.max or not r.min:
                continue
            target = None
            spec = RATIO_TARGETS.get(workload)
            params = pair["bus"].params
            if (
                spec is not None
                and spec[0] == metric
                and all(params.get(k) == v for k, v in spec[3].items())
            ):
                target = spec[2]
            ratio = b.median / r.median
            low, high = b.min / r.max, b.max / r.min
            iqr_low = b.q1 / r.q3 if r.q3 else low
            iqr_high = b.q3 / r.q1 if r.q1 else high
            meets = None
            verdict: Literal["meets", "misses", "inconclusive"] | None = None
            if target is not None:
                meets = ratio >= target if better == "higher" else ratio <= target
                good, bad = (
                    (iqr_low >= target, iqr_high < target)
                    if better == "higher"
                    else (iqr_high <= target, iqr_low > target)
                )
                verdict = "meets" if good else "misses" if bad else "inconclusive"
            ratios.append(
                Ratio(
                    backend=backend,
                    workload=workload,
                    params=params,
                    metric=metric,
                    bus=b.median,
                    raw=r.median,
                    ratio=round(ratio, 3),
                    low=round(low, 3),
                    high=round(high, 3),
                    iqr_low=round(iqr_low, 3),
                    iqr_high=round(iqr_high, 3),
                    target=target,
                    better="higher" if better == "higher" else "lower",
                    meets=meets,
                    verdict=verdict,
                )
            )
    return ratios


async def run_benchmarks(
    plans: Sequence[BackendPlan],
    config: BenchConfig,
    *,
    progress: Progress | None = None,
    command: Sequence[str] = (),
) -> Results:
    """Measure every plan's backend (and its raw client) with ``config``."""
    progress = progress or Progress(0, enabled=False)
    sides_per = [(1 if p.backend == "memory" or not config.raw else 2) for p in plans]
    per_round = sum(len(c.workloads) for c in round_configs(config))
    progress.total = max(1, sum(sides_per) * per_round)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    environment = describe_environment()
    run_id = secrets.token_hex(3)
    targets: list[TargetResult] = []
    points: list[PointResult] = []
    probes: list[Probe] = []
    # Rounds are the outer loop: a figure's runs are split over passes through every
    # backend, minutes apart, so its spread holds the machine's drift over the whole
    # run (a broker's speed moves between minutes; back-to-back runs hide that).
    backends: list[_Backend] = []
    with PollIdle(config.poll_idle) as poll_idle:
        environment["poll_idle"] = poll_idle.status
        if poll_idle.status.startswith("unavailable"):
            progress.note(f"idle CPUs will halt: {poll_idle.status}")
        try:
            for plan in plans:
                opened = await _open_backend(plan, config, progress, targets)
                if opened is not None:
                    backends.append(opened)
            rounds = round_configs(config)
            for round_index, round_config in enumerate(rounds):
                for b in backends:
                    probe = Probe(backend=b.plan.backend, round=round_index, items_s=cpu_probe())
                    probes.append(probe)
                    await _run_round(b, round_config, round_index, len(rounds), run_id, progress)
        finally:
            for b in backends:
                await _close_backend(b, points)
    environment["load_average_end"] = load_average()
    return Results(
        profile=config.profile,
        command=list(command),
        started=started.isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - t0, 1),
        config=config.model_dump(mode="json"),
        environment=environment,
        targets=targets,
        points=points,
        ratios=compute_ratios(points),
        probes=probes,
    )
