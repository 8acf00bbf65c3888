"""Typed benchmark configuration and the named profiles.

A profile is a complete :class:`BenchConfig`; ``--set a.b=value`` overrides one
field (validated like the rest). The same settings drive the library and the
raw-client side of every workload, and the whole config is written into the
results, so a figure can always be traced back to what produced it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

import pydantic

__all__ = [
    "PROFILES",
    "WORKLOADS",
    "BenchConfig",
    "apply_overrides",
    "profile",
]

WorkloadName = Literal[
    "confirmed_publish",
    "batched_publish",
    "consume_ack",
    "latency",
    "fanout",
    "scaling",
    "sizes",
    "job_roundtrip",
    "rpc",
]
WORKLOADS: tuple[WorkloadName, ...] = get_args(WorkloadName)


#: A list of counts, rates or sizes: at least one item, each at least 1 (a rate, size
#: or consumer count of 0 has no meaning, and an empty list would measure nothing).
Positives = Annotated[list[Annotated[int, pydantic.Field(ge=1)]], pydantic.Field(min_length=1)]


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class ConfirmedPublish(_Model):
    """One message at a time, each awaited until the broker confirmed it."""

    count: int = pydantic.Field(default=1000, ge=1)


class BatchedPublish(_Model):
    """``publish_many`` of ``batch`` messages (raw: pipeline / concurrent confirms)."""

    count: int = pydantic.Field(default=10_000, ge=1)
    batch: int = pydantic.Field(default=100, ge=1)


class ConsumeAck(_Model):
    """Drain a backlog of ``count`` messages through one group member, acking each."""

    count: int = pydantic.Field(default=10_000, ge=1)


class Ramp(_Model):
    """Find the highest rate whose p99 stays under ``p99_limit_ms`` and whose achieved
    rate is within 5% of the target: start, multiply by ``factor`` until it fails."""

    enabled: bool = False
    start: int = pydantic.Field(default=1000, ge=1)
    factor: float = pydantic.Field(default=1.6, gt=1)
    max_rate: int = pydantic.Field(default=40_000, ge=1)
    step_s: float = pydantic.Field(default=2.0, gt=0)
    p99_limit_ms: float = pydantic.Field(default=100.0, gt=0)


class Latency(_Model):
    """Publish at fixed rates; latency = handler time - *intended* send time
    (coordinated-omission-aware, OpenMessaging style)."""

    rates: Positives = pydantic.Field(default_factory=lambda: [500, 2000])
    duration_s: float = pydantic.Field(default=3.0, gt=0)
    runs: int | None = pydantic.Field(default=None, ge=1)
    """Measured runs per rate (default: the config's ``runs``); latency runs are long
    enough that fewer of them keep the quick profile within its time budget."""
    warmup_s: float = pydantic.Field(default=0.5, ge=0)
    max_in_flight: int = pydantic.Field(default=16, ge=1)
    """Publish calls in flight at once; each sends every message due at its tick."""
    ramp: Ramp = pydantic.Field(default_factory=Ramp)


class FanOut(_Model):
    """One topic, ``groups`` groups of one consumer each; every group gets every message."""

    groups: int = pydantic.Field(default=4, ge=1)
    count: int = pydantic.Field(default=2000, ge=1)


class Scaling(_Model):
    """Competing consumers: 1, 2, 4 members of one group drain a backlog."""

    consumers: Positives = pydantic.Field(default_factory=lambda: [1, 2, 4])
    count: int = pydantic.Field(default=8000, ge=1)


class Sizes(_Model):
    """Batched publish then drain at each message size; the count per size is
    ``min(count, bytes_budget // size)`` so 64 KiB runs stay bounded in memory."""

    sizes: Positives = pydantic.Field(default_factory=lambda: [128, 1024, 65536])
    count: int = pydantic.Field(default=4000, ge=1)
    bytes_budget: int = pydantic.Field(default=32 * 1024 * 1024, ge=1024)


class JobRoundTrip(_Model):
    """The classify-job case: a controller publishes jobs (``publishers`` concurrent
    confirmed publishes), a worker handles them through ``bus.consume`` with retries
    enabled (``concurrency`` handlers). Raw side: the same publishes and a raw
    consume + ack loop. ``fail_every`` > 0 makes every n-th job fail once on the
    library side (exercises nack with backoff; reported, not part of the ratio).

    ``count`` jobs per run, as given: the run-length bounds (``min_run_s``,
    ``max_run_s``) do not size this workload, as the publishers outrun the worker on
    most backends and a job's latency is the wait behind the burst before it."""

    count: int = pydantic.Field(default=2000, ge=1)
    publishers: int = pydantic.Field(default=8, ge=1)
    concurrency: int = pydantic.Field(default=8, ge=1)
    max_attempts: int = pydantic.Field(default=3, ge=1)
    backoff_s: float = pydantic.Field(default=0.05, ge=0)
    fail_every: int = pydantic.Field(default=0, ge=0)


class Rpc(_Model):
    """Sequential ``bus.request`` round trips to a ``consume`` handler (library only:
    the raw clients have no common request/reply idiom to compare with)."""

    count: int = pydantic.Field(default=300, ge=1)
    timeout_s: float = pydantic.Field(default=5.0, gt=0)


class Kafka(_Model):
    """Kafka settings shared by both sides (the raw aiokafka client and, where the
    backend accepts them, the library's options)."""

    partitions: int = pydantic.Field(default=4, ge=1)
    fetch_max_wait_ms: int = pydantic.Field(default=10, ge=0)
    session_timeout_ms: int | None = pydantic.Field(default=None, ge=1000)
    """Group session timeout. None: 2,000 on a Tansu broker running on this machine,
    6,000 elsewhere. Tansu holds every group join for about half the session timeout
    (at least 1 s) and has no lower bound; Kafka itself refuses less than its
    ``group.min.session.timeout.ms`` (6,000 by default). The quick profile joins a
    group ~60 times on Kafka: 2 s instead of 6 s took ~100 s off its run on Tansu."""
    heartbeat_interval_ms: int = pydantic.Field(default=500, ge=100)
    rebalance_timeout_ms: int = pydantic.Field(default=3000, ge=1000)
    linger_ms: int = pydantic.Field(default=0, ge=0)
    max_batch_bytes: int = pydantic.Field(default=256 * 1024, ge=1024)
    """Producer batch size per partition (aiokafka ``max_batch_size``; 16 KiB by default,
    which caps a pipelined publish: both sides use this)."""


def session_timeout_for(kafka: Kafka, implementation: str) -> Kafka:
    """``kafka`` with its session timeout decided for a broker whose implementation
    (as the results record it) is ``implementation``."""
    if kafka.session_timeout_ms is not None:
        return kafka
    tansu = "tansu" in implementation.lower()
    return kafka.model_copy(update={"session_timeout_ms": 2000 if tansu else 6000})


class RabbitMQ(_Model):
    queue_type: Literal["quorum", "classic"] = "quorum"
    """Queue type for the raw side; match what the library's backend declares."""


class NATS(_Model):
    storage: Literal["file", "memory"] = "file"


class BenchConfig(_Model):
    profile: str = "custom"
    runs: int = pydantic.Field(default=3, ge=1)
    """Measured runs per figure; the figure is their median, with min/max and IQR."""
    warmup_runs: int = pydantic.Field(default=1, ge=0)
    """Discarded runs before the measured ones, in every round."""
    rounds: int = pydantic.Field(default=1, ge=1)
    """Passes through every backend's workloads (round 1 of all backends, then round
    2, ...); the measured runs of every figure are split over them (6 runs in 2
    rounds: 3 + 3). Back-to-back runs share the machine's state of that minute; runs
    minutes apart also show its drift, so a figure's spread is what a rerun can
    expect."""
    min_run_s: float = pydantic.Field(default=0.1, ge=0)
    """Shortest a timed run of a counted workload should last. Where the first
    warm-up run on a backend was shorter, every later run of that figure on that
    backend (both sides, every round) handles proportionally more messages, up to
    ``max_run_scale`` times the profile's count and never past ``max_run_s``: a run of
    a few milliseconds measures start-up and timer jitter, not throughput. 0 turns
    this off."""
    max_run_s: float = pydantic.Field(default=0.0, ge=0)
    """Longest a run of a counted workload should take, its backlog's publishing
    included. Where the first warm-up run of a figure on a backend took longer,
    every later run of that figure on that backend (both sides, every round) handles
    proportionally fewer messages, down to 1/``max_run_scale`` of the profile's count:
    on a slow machine or broker a profile then keeps its time budget instead of
    overrunning it, and the results record the count measured. 0 turns this off."""
    max_run_scale: int = pydantic.Field(default=8, ge=1)
    """How far run-length sizing may move a profile's count, either way."""
    poll_idle: bool = True
    """Keep idle CPUs polling instead of halting during the run (PM QoS,
    :mod:`benchmarks.pollidle`; needs root and a cpuidle driver, else the run says it
    could not): on a virtual machine every wake-up of a halted CPU delays a round trip
    by a varying amount (between two runs of the same code, figures moved a median
    12-13 % halting and 4.7-5.6 % polling). Off: the figures include those delays, as
    on an idling host."""
    freeze_heap: bool = True
    """Before each run, collect garbage and freeze the harness's heap
    (:mod:`benchmarks.heap`), so that a full collection falling inside a run traverses
    what the run allocated, not every object of the process (the client libraries of
    five brokers, the results so far): such a collection took up to 167 ms, most of a
    0.2 s run. Off: each run pays for collections sized by the whole harness, wherever
    they happen to fall."""
    message_size: int = pydantic.Field(default=1024, ge=16)
    prefetch: int = pydantic.Field(default=256, ge=1, le=10_000)
    """Deliveries a consumer may hold unsettled (both sides: prefetch, count, batch)."""
    workloads: list[WorkloadName] = pydantic.Field(
        default_factory=lambda: list(WORKLOADS), min_length=1
    )
    raw: bool = True
    """Also run each broker's raw client on the same workloads."""
    workload_timeout_s: float = pydantic.Field(default=120.0, gt=0)
    """How long each wait for messages inside a workload may take (a backlog's drain,
    a fan-out or scaling run, the job round trip's jobs) before the workload is
    recorded as an error and the run goes on. A whole workload on one target, all its
    runs together, is cut off at twice this (``runner.WORKLOAD_BOUND``), so that a
    stalled drain ends on its own bound first and says how many messages came; its
    clean-up then gets up to ``cleanup_timeout_s`` more."""
    cleanup_timeout_s: float = pydantic.Field(default=15.0, gt=0)
    """The allowance of each clean-up step, beyond the workload's bound: closing a
    workload's extra connections, deleting what it left on the broker (per side), and
    closing each side's connection at the end of the run (15 s by default, the bound
    the workloads give each consumer's close). A step that overruns is
    abandoned with a warning (recorded in the results) and the run goes on: the raw
    clients (redis-py, aio-pika) have no timeouts of their own."""
    confirmed_publish: ConfirmedPublish = pydantic.Field(default_factory=ConfirmedPublish)
    batched_publish: BatchedPublish = pydantic.Field(default_factory=BatchedPublish)
    consume_ack: ConsumeAck = pydantic.Field(default_factory=ConsumeAck)
    latency: Latency = pydantic.Field(default_factory=Latency)
    fanout: FanOut = pydantic.Field(default_factory=FanOut)
    scaling: Scaling = pydantic.Field(default_factory=Scaling)
    sizes: Sizes = pydantic.Field(default_factory=Sizes)
    job_roundtrip: JobRoundTrip = pydantic.Field(default_factory=JobRoundTrip)
    rpc: Rpc = pydantic.Field(default_factory=Rpc)
    kafka: Kafka = pydantic.Field(default_factory=Kafka)
    rabbitmq: RabbitMQ = pydantic.Field(default_factory=RabbitMQ)
    nats: NATS = pydantic.Field(default_factory=NATS)
    library_options: dict[str, dict[str, Any]] = pydantic.Field(default_factory=dict)
    """Extra ``bus.connect`` options of the library side, keyed by broker kind
    (``memory``, ``redis``, ``rabbitmq``, ``nats``, ``kafka``) or by URL scheme
    (``amqp``, ``rediss``, ``tls``, ...); where both match a URL, the scheme's
    options win. They override the settings the library side shares with the raw side
    (the ``kafka``, ``rabbitmq`` and ``nats`` sections): where one then differs from
    the raw side's, the run warns and records it (``results.warnings`` and the bus
    target's ``settings["differs_from_raw"]``)."""

    @pydantic.model_validator(mode="after")
    def _run_bounds(self) -> BenchConfig:
        if self.max_run_s and self.max_run_s <= self.min_run_s:
            raise ValueError(
                f"max_run_s ({self.max_run_s}) must be 0 (off) or more than "
                f"min_run_s ({self.min_run_s})"
            )
        return self


def _quick() -> BenchConfig:
    return BenchConfig(
        profile="quick",
        # Six measured runs per figure, two in each of three rounds. With min-max
        # spreads, two runs of n measurements that differ only at random reproduce
        # ~90 % of their figures for n = 4, ~98 % for n = 6 and ~99.5 % for n = 8
        # (benchmarks.compare.chance_share); what they miss on a shared machine is
        # its speed, which moved 34-43 % between runs of the same code (CPU probe)
        # and stays for a backend's pass of a round (~40 s): a figure sees as many
        # machine states as it has rounds. Measured on one machine, same day, a
        # pair of runs of the same code each: 8 runs in 2 rounds 79 % reproduced
        # (396 s a run), 6 in 4 rounds 92 % (469-471 s: a round costs Kafka ~25 s
        # of group joins), 6 in 3 rounds 90-94 % in four pairs (405-416 s). The
        # latency runs (fixed length) stay at four per rate.
        runs=6,
        rounds=3,
        warmup_runs=1,
        # A run may take 0.2 s (backlog included) before later ones shrink: on a
        # slower machine (CPU probe 0.8-1.3 M items/s against 4-6 M, a RabbitMQ
        # quorum queue confirming 500 msg/s against 2,000) the same counts took
        # 698 s, with 0.3 s 544-570 s.
        max_run_s=0.2,
        confirmed_publish=ConfirmedPublish(count=350),
        batched_publish=BatchedPublish(count=2700, batch=100),
        consume_ack=ConsumeAck(count=2700),
        latency=Latency(rates=[500, 2000], duration_s=1.0, warmup_s=0.25, runs=4),
        # Sized so that `bus bench --all --profile quick` stays under 10 minutes on
        # a 2-core machine: RabbitMQ (quorum queues, ~4k msg/s here, fsync-bound and
        # variable) and Kafka's group joins (~3 s each) set the pace. The counts are
        # two thirds of those of four runs per figure (consume 4000, scaling 1500).
        fanout=FanOut(groups=3, count=700),
        scaling=Scaling(consumers=[1, 2, 4], count=1000),
        sizes=Sizes(sizes=[128, 1024, 65536], count=800, bytes_budget=32 * 1024 * 1024),
        # Not sized by max_run_s (see JobRoundTrip): 500 jobs take RabbitMQ (~1,200
        # jobs/s here) 0.4 s a run, memory:// (~30,000 jobs/s) 17 ms.
        job_roundtrip=JobRoundTrip(count=500),
        rpc=Rpc(count=100),
    )


def _full() -> BenchConfig:
    return BenchConfig(
        profile="full",
        runs=8,
        rounds=2,
        warmup_runs=1,
        confirmed_publish=ConfirmedPublish(count=3000),
        batched_publish=BatchedPublish(count=30_000, batch=100),
        consume_ack=ConsumeAck(count=30_000),
        latency=Latency(
            rates=[500, 2000, 10_000],
            duration_s=10.0,
            warmup_s=2.0,
            ramp=Ramp(enabled=True, start=1000, factor=1.6, step_s=4.0),
        ),
        fanout=FanOut(groups=4, count=5000),
        scaling=Scaling(consumers=[1, 2, 4], count=20_000),
        sizes=Sizes(sizes=[128, 1024, 65536], count=10_000, bytes_budget=64 * 1024 * 1024),
        job_roundtrip=JobRoundTrip(count=5000, fail_every=0),
        rpc=Rpc(count=1000),
    )


PROFILES = {"quick": _quick, "full": _full}


def profile(name: str) -> BenchConfig:
    """A fresh copy of the named profile."""
    try:
        return PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}") from None


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(part) for part in text.split(",")]
        return text


def apply_overrides(config: BenchConfig, pairs: Iterable[str]) -> BenchConfig:
    """Apply ``dotted.key=value`` overrides (values parsed as JSON when they parse,
    ``a,b`` as a list); raises ``ValueError`` naming the bad key or value."""
    data = config.model_dump()
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {pair!r}")
        node: Any = data
        parts = key.split(".")
        free = parts[0] == "library_options"  # free-form: scheme -> option -> value
        for part in parts[:-1]:
            if free and isinstance(node, dict):
                node = node.setdefault(part, {})
                continue
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"unknown setting {key!r}")
            node = node[part]
        if not isinstance(node, dict) or (parts[-1] not in node and not free):
            raise ValueError(f"unknown setting {key!r}")
        value = _parse_value(raw)
        if parts[-1] in ("rates", "consumers", "sizes", "workloads") and not isinstance(
            value, list
        ):
            value = [value]
        node[parts[-1]] = value
    try:
        return BenchConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "config"
            problems.append(f"{where}: {error['msg']} (got {error['input']!r})")
        raise ValueError("invalid settings: " + "; ".join(problems)) from None
