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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from benchmarks import heap
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
    "backend_kind",
    "backend_of",
    "broker_key",
    "compute_ratios",
    "dedupe_plans",
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
    """The broker kind (``redis``, ``rabbitmq``, ``nats``, ``kafka``, ``memory``)."""
    url: str
    origin: str = "url"
    reason: str = ""
    """Why it cannot be measured (provisioning failed), else empty."""
    broker_handle: Any = field(default=None, repr=False)
    id: str = ""
    """What the results call this backend (``TargetResult.backend``, the ``{id}/{side}``
    target ids, ``PointResult.backend``, ``Ratio.backend``, ``Probe.backend``): the kind
    itself, or ``kind#n`` for the n-th distinct broker of one kind in a run (see
    :func:`dedupe_plans`). Empty: the kind."""

    def __post_init__(self) -> None:
        self.id = self.id or self.backend

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


def _host_port(item: str, default: int | None) -> tuple[str, int | str | None]:
    parts = urlsplit(f"//{item}")
    host = (parts.hostname or "").lower()
    # the names of this machine, and no host (the clients' default), are one broker
    if not host or host in _LOCAL_HOSTS or host == "::1":
        host = "127.0.0.1"
    try:
        port: int | str | None = parts.port or default
    except ValueError:  # not a number: compare as written
        port = item.rpartition(":")[2]
    return host, port


def broker_key(plan: BackendPlan) -> tuple[Any, ...]:
    """What identifies the broker of ``plan``: its kind, its hosts and ports (each
    name of this machine, and no host, as ``127.0.0.1``; a missing port as the kind's
    default), and the Redis database (default 0) or RabbitMQ virtual host (default
    ``/``); ``memory://name``: the in-process broker's name. Two plans with one key
    measure the same thing."""
    kind = plan.backend
    parts = urlsplit(plan.url)
    if kind == "memory":
        return (kind, (parts.netloc or parts.path.strip("/")) or "default")
    netloc = parts.netloc.rpartition("@")[2]
    default = _DEFAULT_PORTS.get(kind)
    hosts = tuple(sorted(_host_port(item, default) for item in netloc.split(",")))
    path = unquote(parts.path)
    if kind == "redis":
        return (kind, hosts, path.strip("/") or "0")
    if kind == "rabbitmq":
        return (kind, hosts, path[1:] or "/")
    return (kind, hosts)


def dedupe_plans(plans: Sequence[BackendPlan]) -> tuple[list[BackendPlan], list[str]]:
    """``plans`` with each broker once (by :func:`broker_key`; the first plan of a
    broker is kept), without a failed provisioning of a kind that another plan
    measures, and with unique ids: the first broker of a kind keeps the kind as its
    id (``redis``, so its targets stay ``redis/bus`` and ``redis/raw``), a second
    distinct broker of that kind is ``redis#2``, and so on. Returns the plans and a
    warning for each plan left out."""
    from bus import redact_url

    warnings: list[str] = []
    seen: dict[tuple[Any, ...], BackendPlan] = {}
    for plan in plans:
        key = broker_key(plan)
        first = seen.get(key)
        if first is None:
            seen[key] = plan
            continue
        if first.reason and not plan.reason:
            seen[key] = plan  # one that can be measured beats one that cannot
            first, plan = plan, first
        warnings.append(
            f"{plan.backend}: {redact_url(plan.url)} is the broker of "
            f"{redact_url(first.url)}: measured once"
        )
    kept = list(seen.values())
    measured = {p.backend for p in kept if not p.reason}
    out: list[BackendPlan] = []
    count: dict[str, int] = {}
    for plan in kept:
        if plan.reason and plan.backend in measured:
            warnings.append(
                f"{plan.backend}: not provisioned ({plan.reason.splitlines()[0][:120]}), "
                "but another URL of this kind is measured"
            )
            continue
        n = count[plan.backend] = count.get(plan.backend, 0) + 1
        out.append(replace(plan, id=plan.backend if n == 1 else f"{plan.backend}#{n}"))
    return out, warnings


def backend_kind(backend_id: str) -> str:
    """The broker kind of a results' backend id: ``redis#2`` -> ``redis``."""
    return backend_id.partition("#")[0]


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


def _raw_section(backend: str, config: BenchConfig) -> dict[str, Any]:
    """The config section whose settings the raw side of ``backend`` uses."""
    return {
        "kafka": config.kafka.model_dump(),
        "rabbitmq": config.rabbitmq.model_dump(),
        "nats": config.nats.model_dump(),
    }.get(backend, {})


def shared_options(backend: str, url: str, config: BenchConfig) -> dict[str, Any]:
    """The raw side's settings that the library backend also takes, under the same
    option name (e.g. Kafka ``fetch_max_wait_ms``, NATS ``storage``), so both sides
    run with the same settings wherever the backend exposes them."""
    section = _raw_section(backend, config)
    if not section:
        return {}
    try:
        from bus.registry import resolve

        fields = set(resolve(url).Options.model_fields)
    except Exception:  # the backend may not be installed yet
        return {}
    # None: decided per broker (or the backend's default where the run did not)
    return {name: v for name, v in section.items() if name in fields and v is not None}


def library_options(
    backend: str, url: str, config: BenchConfig
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The options the library side of ``backend`` (a broker kind) at ``url`` connects
    with, and where they differ from the raw side's settings.

    Options: :func:`shared_options`, then ``config.library_options`` of the broker
    kind (``rabbitmq``), then of the URL's scheme (``amqp``) where that is another
    key; a later one wins. Differences: each ``library_options`` entry that sets an
    option the raw side takes from the config's ``kafka``, ``rabbitmq`` or ``nats``
    section to another value, as ``name -> {"bus": value, "raw": value}`` (the two
    sides then do not run with the same settings)."""
    scheme = urlsplit(url).scheme.lower()
    chosen = dict(config.library_options.get(backend, {}))
    if scheme != backend:
        chosen.update(config.library_options.get(scheme, {}))
    section = _raw_section(backend, config)
    differs = {
        name: {"bus": value, "raw": section[name]}
        for name, value in chosen.items()
        if name in section and section[name] != value
    }
    return {**shared_options(backend, url, config), **chosen}, differs


def library_factory(backend: str, url: str, config: BenchConfig) -> Callable[[], Driver]:
    """A constructor of the library driver, with :func:`library_options`."""
    from benchmarks.drivers.library import LibraryDriver

    options, _ = library_options(backend, url, config)
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


#: A whole workload on one target (every run of it) is cut off at this many times
#: ``workload_timeout_s``, the bound of each wait for messages inside it: the inner
#: bound fires first where a drain stalls, and says how many messages came.
WORKLOAD_BOUND = 2
#: How long opening a driver (and asking its broker what it is) may take.
_CONNECT_TIMEOUT_S = 60.0

Warn = Callable[[str], None]


async def _within(step: Awaitable[None], seconds: float, what: str, warn: Warn) -> None:
    """Await ``step`` for at most ``seconds``: clean-up and close talk to a broker
    through clients with no timeouts of their own (redis-py, aio-pika), and a broker
    that stopped answering must not hang the run. A failure or overrun is a warning."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        warn(f"{what}: gave up after {seconds:g} s (cleanup_timeout_s)")
    except Exception as exc:
        warn(f"{what} failed: {type(exc).__name__}: {exc}")


@dataclass
class _Backend:
    """One backend's sides (library and raw client) across the rounds of a run."""

    plan: BackendPlan
    sides: list[_Side]
    proc: Any
    config: BenchConfig
    """The run's config with the settings decided for this broker (:func:`for_broker`)."""
    #: per target id: the points of every round so far, and what rounds carry over
    collected: dict[str, list[Point]] = field(init=False)
    carry: dict[str, dict[Any, Any]] = field(init=False)
    #: message counts calibrated per figure, the same for both sides (Context.count)
    sizing: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.collected = {side.target.id: [] for side in self.sides}
        self.carry = {side.target.id: {} for side in self.sides}


async def _open_backend(
    plan: BackendPlan,
    config: BenchConfig,
    progress: Progress,
    targets: list[TargetResult],
    warn: Warn,
) -> _Backend | None:
    """Connect both sides of ``plan`` (None when the backend is not measured)."""
    from bus import redact_url

    proc, broker = local_broker(plan)
    config = for_broker(config, plan, broker)

    sides: list[_Side] = []
    raw = raw_factory(plan.backend, plan.url, config) if config.raw else None
    library = library_factory(plan.backend, plan.url, config)
    pairs: tuple[tuple[Side, Callable[[], Driver] | None], ...] = (("raw", raw), ("bus", library))
    for which, factory in pairs:
        if factory is None:
            continue
        sides.append(
            _Side(
                which,
                factory,
                TargetResult(
                    id=f"{plan.id}/{which}",
                    backend=plan.id,
                    side=which,
                    url=redact_url(plan.url),
                    origin=plan.origin,
                ),
            )
        )
    for side in sides:
        targets.append(side.target)
    _, differs = library_options(plan.backend, plan.url, config)
    if differs and raw is not None:
        sides[-1].target.settings["differs_from_raw"] = differs
        for name, values in differs.items():
            warn(
                f"{plan.id}: library option {name}={values['bus']!r} overrides the raw "
                f"side's {values['raw']!r}: the two sides do not run with the same settings"
            )
    if plan.reason:
        for side in sides:
            side.target.status = "skipped"
            side.target.reason = plan.reason
        progress.done += len(sides) * sum(len(c.workloads) for c in round_configs(config))
        progress.note(f"{plan.id}: not measured: {plan.reason.splitlines()[0]}")
        return None

    for side in sides:
        driver = side.factory()
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                await driver.open()
        except Exception as exc:
            side.target.status = "error"
            side.target.reason = f"cannot connect: {type(exc).__name__}: {exc}"
            progress.note(f"{side.target.id}: {side.target.reason}")
            await _within(
                driver.close(), config.cleanup_timeout_s, f"closing {side.target.id}", warn
            )
            continue
        side.driver = driver
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                info = await driver.broker_info()
            for key, value in info.items():
                broker.setdefault(key, value)
    for side in sides:
        side.target.broker = broker

    return _Backend(plan, sides, proc, config)


async def _run_round(
    b: _Backend,
    round_config: BenchConfig,
    round_index: int,
    rounds: int,
    run_id: str,
    progress: Progress,
    warn: Warn,
) -> None:
    """One pass through the round's workloads, both sides of each in turn."""
    started = time.monotonic()
    bound = round_config.workload_timeout_s * WORKLOAD_BOUND
    allowance = round_config.cleanup_timeout_s
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
                async with asyncio.timeout(bound):
                    result = await func(ctx)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if isinstance(exc, TimeoutError) and not str(exc):  # the bound above
                    message = (
                        f"TimeoutError: the workload took over {bound:g} s "
                        f"({WORKLOAD_BOUND} x workload_timeout_s)"
                    )
                # the round it failed in: a ratio pairs only sides that failed alike
                failed = _FAILED_IN.format(round_index + 1, rounds)
                result = [Point(workload, {}, notes=[failed], error=message)]
            finally:
                where = f"{side.target.id} {workload}"
                await _within(ctx.aclose(), allowance, f"closing {where}'s connections", warn)
                await _within(
                    side.driver.cleanup(ctx.topics, sorted(ctx.groups)),
                    allowance,
                    f"cleanup after {where}",
                    warn,
                )
                spent_here = side.target.workload_s.get(workload, 0.0)
                spent_here += time.monotonic() - began
                side.target.workload_s[workload] = round(spent_here, 1)
            b.collected[side.target.id].extend(result)
            progress.finish(_headline(result))
    if round_config.freeze_heap:
        heap.release()  # what the pass left as garbage (closed connections) goes now
    spent = time.monotonic() - started
    for side in b.sides:
        side.target.duration_s = round(side.target.duration_s + spent, 1)


async def _close_backend(b: _Backend, points: list[PointResult], warn: Warn) -> None:
    """Merge each side's rounds into its figures and disconnect (each close bounded
    by ``cleanup_timeout_s``)."""
    for side in b.sides:
        for point in merge_rounds(b.collected[side.target.id]):
            points.append(_summarize(point, side.target))
        if side.driver is not None:
            side.target.settings = {**side.target.settings, **side.driver.settings()}
            await _within(
                side.driver.close(), b.config.cleanup_timeout_s, f"closing {side.target.id}", warn
            )


def _decided_config(
    config: BenchConfig, backends: Sequence[_Backend], warn: Warn
) -> dict[str, Any]:
    """``config`` as the results record it, with each setting decided per broker (left
    None in ``config``, e.g. ``kafka.session_timeout_ms``) filled in where every broker
    that needed it got the same value; where they differ, a warning names each value
    (the targets' settings hold what each side used)."""
    out = config.model_dump(mode="json")
    for section in ("kafka", "rabbitmq", "nats"):
        given = out[section]
        decided: dict[str, dict[str, Any]] = {}
        for b in backends:
            if b.plan.backend != section:
                continue
            mine = b.config.model_dump(mode="json")[section]
            for name, value in mine.items():
                if given.get(name) is None and value is not None:
                    decided.setdefault(name, {})[b.plan.id] = value
        for name, per in decided.items():
            values = set(map(repr, per.values()))
            if len(values) == 1:
                given[name] = next(iter(per.values()))
            else:
                warn(f"{section}.{name} decided per broker: {per}")
    return out


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


#: The note of a workload's error point: the round (1-based) it failed in, of how many.
_FAILED_IN = "failed in round {} of {}"


def _failed_rounds(points: Sequence[PointResult]) -> dict[tuple[str, str, str], list[str]]:
    """(backend, workload, side) -> the rounds that workload failed in on that side
    (``_FAILED_IN`` notes; ``["?"]`` for results written without them)."""
    out: dict[tuple[str, str, str], list[str]] = {}
    prefix = _FAILED_IN.split("{")[0]
    for p in points:
        if p.error:
            rounds = sorted(n[len(prefix) :] for n in p.notes if n.startswith(prefix))
            out.setdefault((p.backend, p.workload, p.side), []).extend(rounds or ["?"])
    return out


def compute_ratios(points: Sequence[PointResult]) -> list[Ratio]:
    """Library / raw of each workload's headline metric, per backend and parameters.

    Where the workload failed in a round on one side and not on the other (or in
    other rounds), the two medians hold runs of different rounds: the ratio is
    marked ``partial`` and judged ``inconclusive`` at most."""
    failed = _failed_rounds(points)
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
            partial = ""
            bus_failed = failed.get((backend, workload, "bus"), [])
            raw_failed = failed.get((backend, workload, "raw"), [])
            if bus_failed != raw_failed:
                said = [
                    ", ".join(f"round {r}" for r in f) or "no round"
                    for f in (bus_failed, raw_failed)
                ]
                partial = f"bus failed in {said[0]}, raw in {said[1]}"
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
                if partial:  # the sides' runs are of different minutes of the machine
                    verdict = "inconclusive"
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
                    partial=partial,
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
    """Measure every plan's backend (and its raw client) with ``config``: each broker
    once, under a unique id (:func:`dedupe_plans`); what the run warned about (plans
    left out, clean-ups that failed or overran, settings that differ between the
    sides) is in ``Results.warnings``."""
    progress = progress or Progress(0, enabled=False)
    plans, dropped = dedupe_plans(plans)
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
    warnings: list[str] = []

    def warn(text: str) -> None:
        progress.note(text)
        warnings.append(text)

    for text in dropped:
        warn(text)
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
                opened = await _open_backend(plan, config, progress, targets, warn)
                if opened is not None:
                    backends.append(opened)
            rounds = round_configs(config)
            for round_index, round_config in enumerate(rounds):
                for b in backends:
                    probe = Probe(backend=b.plan.id, round=round_index, items_s=cpu_probe())
                    probes.append(probe)
                    await _run_round(
                        b, round_config, round_index, len(rounds), run_id, progress, warn
                    )
        finally:
            if config.freeze_heap:
                heap.release()  # a pass cut short leaves its objects frozen otherwise
            for b in backends:
                await _close_backend(b, points, warn)
    environment["load_average_end"] = load_average()
    recorded = _decided_config(config, backends, warn)
    return Results(
        profile=config.profile,
        command=list(command),
        started=started.isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - t0, 1),
        config=recorded,
        environment=environment,
        targets=targets,
        points=points,
        ratios=compute_ratios(points),
        probes=probes,
        warnings=warnings,
    )
