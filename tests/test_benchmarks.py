"""Smoke test of the benchmark harness: tiny counts, memory:// and Redis (raw client
baseline, plus the library backend when it is installed). Checks the results
structure and that the report and charts are written; no timing assertions."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmarks.brokercost import CostMeter
from benchmarks.cli import main
from benchmarks.compare import chance_share, compare
from benchmarks.config import apply_overrides, profile, session_timeout_for
from benchmarks.report import decision_rows, render_markdown, write_report
from benchmarks.results import PointResult, Probe, Ratio, Results, TargetResult
from benchmarks.runner import compute_ratios, merge_rounds, round_configs
from benchmarks.stats import summarize
from benchmarks.workloads import Context, Point
from conformance.brokers import Broker

TINY = [
    "runs=2",
    "rounds=2",
    "warmup_runs=1",
    "max_run_scale=4",
    "confirmed_publish.count=20",
    "batched_publish.count=60",
    "batched_publish.batch=20",
    "consume_ack.count=60",
    "latency.rates=200",
    "latency.duration_s=0.3",
    "latency.warmup_s=0",
    "fanout.groups=2",
    "fanout.count=30",
    "scaling.consumers=1,2",
    "scaling.count=40",
    "sizes.sizes=128,65536",
    "sizes.count=20",
    "job_roundtrip.count=30",
    "job_roundtrip.publishers=2",
    "rpc.count=5",
    "workload_timeout_s=60",
]


def _results(points: list[PointResult], targets: Sequence[TargetResult] = ()) -> Results:
    """A results file holding ``points`` (and ``targets``), as a run would write it."""
    return Results(
        profile="quick",
        command=["bus", "bench"],
        started="2026-12-01T00:00:00+00:00",
        duration_s=1.0,
        config={},
        environment={},
        targets=list(targets),
        points=points,
    )


def test_quick_profile_overrides_are_validated() -> None:
    config = apply_overrides(profile("quick"), ["consume_ack.count=7", "latency.rates=100,200"])
    assert config.consume_ack.count == 7
    assert config.latency.rates == [100, 200]
    with pytest.raises(ValueError, match="unknown setting"):
        apply_overrides(config, ["consume_ack.nope=1"])
    with pytest.raises(ValueError):
        apply_overrides(config, ["consume_ack.count=-1"])


def test_kafka_session_timeout_is_decided_by_the_broker() -> None:
    kafka = profile("quick").kafka
    assert kafka.session_timeout_ms is None
    tansu = "Tansu (Kafka protocol, memory storage)"
    assert session_timeout_for(kafka, tansu).session_timeout_ms == 2000
    assert session_timeout_for(kafka, "Kafka protocol").session_timeout_ms == 6000
    chosen = apply_overrides(profile("quick"), ["kafka.session_timeout_ms=10000"]).kafka
    assert session_timeout_for(chosen, tansu).session_timeout_ms == 10000


def test_rounds_split_the_runs_and_merge_them_back() -> None:
    config = apply_overrides(profile("quick"), ["runs=5", "rounds=2", "latency.runs=1"])
    first, second = round_configs(config)
    assert (first.runs, second.runs) == (3, 2)
    assert first.latency.runs == 1
    assert "latency" in first.workloads
    assert "latency" not in second.workloads  # its one run went to the first round

    def part(values: list[float], curve: list[tuple[float, float]] | None) -> Point:
        return Point("latency", {"rate": 500}, {"p99_ms": values}, cpu_s=[0.1], curve_ms=curve)

    (merged,) = merge_rounds([part([1.0, 2.0], [(50.0, 1.0)]), part([3.0], [(50.0, 2.0)])])
    assert merged.runs["p99_ms"] == [1.0, 2.0, 3.0]
    assert merged.cpu_s == [0.1, 0.1]
    assert merged.curve_ms == [(50.0, 2.0)]  # the latest: it covers every round


def test_first_warmup_run_sizes_the_later_runs_of_a_figure() -> None:
    config = apply_overrides(
        profile("quick"), ["min_run_s=0.1", "max_run_s=0.5", "max_run_scale=8"]
    )
    sizing: dict[str, int] = {}
    ctx = Context(config, None, lambda: None, run_id="t", broker_proc=None, sizing=sizing)  # type: ignore[arg-type]
    assert ctx.count("consume_ack", 100) == 100
    ctx.calibrate(0, "consume_ack", 100, 0.04)  # 40 ms: 3x to reach 0.1 s
    ctx.calibrate(0, "fanout/2", 100, 0.01, took=0.2)  # 10x would take 2 s: 2x
    ctx.calibrate(0, "batched_publish", 100, 0.001)  # 1 ms: capped at 8x
    ctx.calibrate(0, "sizes/65536", 100, 0.001, cap=250)  # capped by its memory bound
    ctx.calibrate(0, "confirmed_publish", 100, 0.3)  # within bounds: as given
    ctx.calibrate(0, "sizes/1024", 1000, 2.0)  # 2 s: a quarter, to take 0.5 s
    ctx.calibrate(0, "sizes/128", 1000, 0.2, took=1.0)  # the whole run counts: half
    ctx.calibrate(0, "scaling/1", 1000, 60.0)  # shrinks at most 8x
    ctx.calibrate(0, "rpc", 100, 2.0, shrink=False)  # per-run percentiles keep samples
    ctx.calibrate(1, "fanout", 100, 0.001)  # not the first run: no sizing
    ctx.calibrate(0, "consume_ack", 300, 0.001)  # sized once, by the first side
    assert sizing == {
        "consume_ack": 300,
        "fanout/2": 200,
        "batched_publish": 800,
        "sizes/65536": 250,
        "confirmed_publish": 100,
        "sizes/1024": 250,
        "sizes/128": 500,
        "scaling/1": 125,
        "rpc": 100,
    }
    # the other side and later rounds share the sizes
    other = Context(config, None, lambda: None, run_id="t", broker_proc=None, sizing=sizing)  # type: ignore[arg-type]
    assert other.count("consume_ack", 100) == 300
    # without a warm-up run nothing is sized (a measured run never changes size)
    cold = apply_overrides(config, ["warmup_runs=0"])
    ctx = Context(cold, None, lambda: None, run_id="t", broker_proc=None, sizing={})  # type: ignore[arg-type]
    ctx.calibrate(0, "consume_ack", 100, 0.001)
    assert ctx.sizing == {}


def test_run_length_bounds_are_validated() -> None:
    with pytest.raises(ValueError, match="max_run_s"):
        apply_overrides(profile("quick"), ["min_run_s=0.5", "max_run_s=0.2"])
    off = apply_overrides(profile("quick"), ["max_run_s=0"])  # 0: no upper bound
    ctx = Context(off, None, lambda: None, run_id="t", broker_proc=None, sizing={})  # type: ignore[arg-type]
    ctx.calibrate(0, "consume_ack", 100, 30.0)
    assert ctx.sizing == {"consume_ack": 100}


def test_ratio_uses_medians_and_spread_bounds() -> None:
    def point(side: str, values: list[float]) -> PointResult:
        return PointResult(
            target=f"redis/{side}",
            backend="redis",
            side=side,  # type: ignore[arg-type]
            workload="consume_ack",
            params={"size": 1024},
            metrics={"msg_s": summarize(values)},
        )

    (ratio,) = compute_ratios([point("bus", [70, 80, 90]), point("raw", [95, 100, 105])])
    assert ratio.ratio == pytest.approx(0.8)
    assert ratio.low == pytest.approx(70 / 105, abs=1e-3)
    assert ratio.target == 0.7
    assert ratio.meets is True
    assert ratio.verdict == "meets"  # the IQR range (0.73-0.87) clears 0.7


def test_compare_counts_figures_whose_medians_fall_in_the_other_spread() -> None:
    def results(consume: list[float], publish: list[float]) -> Results:
        def point(workload: str, values: list[float]) -> PointResult:
            return PointResult(
                target="redis/bus",
                backend="redis",
                side="bus",
                workload=workload,
                params={"size": 1024, "count": 2700},
                metrics={"msg_s": summarize(values)},
            )

        return _results([point("consume_ack", consume), point("batched_publish", publish)])

    before = results([90, 100, 110], [1000, 1100, 1200])
    after = results([95, 108, 125], [1500, 1600, 1700])  # consume overlaps, publish not
    for p in after.points:  # sized differently by the run-length floor: the same figure
        p.params["count"] = 5000
    decisions = [
        ("Job queue", "Redis Streams", "Redis Streams"),
        ("RPC", "NATS", "Redis"),
        ("Fan-out", "Redis", "Kafka = Redis (tie)"),
    ]
    comparison = compare(before, after, "before.json", decisions)
    assert [(d.workload, d.within) for d in comparison.deltas] == [
        ("consume_ack", True),
        ("batched_publish", False),
    ]
    assert (comparison.reproduced, comparison.runs) == (1, 3)
    text = comparison.markdown()
    assert "1 of 2 figures (50%) reproduced" in text
    assert "Of the 1 that did not, 0 moved less than 10%" in text
    assert "Answers of the decision table: 1 of 3 the same, 2 consistent" in text
    assert f"about {100 * chance_share(3):.0f}%" in text
    # moves +8% and +45%; spreads of this run (125-95)/108 and (1700-1500)/1600
    assert "a figure moved a median 26.7% (90th percentile 45%)" in text
    assert "spreads are a median 20% of their figure wide" in text
    assert "Library/raw ratios" not in text  # neither run has ratios
    assert comparison.probe_change is None  # neither run has probe readings
    before.probes = [Probe(backend="redis", round=r, items_s=v) for r, v in ((0, 2e6), (1, 2e6))]
    after.probes = [Probe(backend="redis", round=0, items_s=3e6)]
    comparison = compare(before, after, "before.json", decisions)
    assert comparison.probe_change == pytest.approx(0.5)
    assert "its CPU probe ran +50% against the previous run" in comparison.markdown()

    def ratio(value: float, low: float, high: float, count: int) -> Ratio:
        return Ratio(
            backend="redis",
            workload="consume_ack",
            params={"size": 1024, "count": count},
            metric="msg_s",
            bus=value,
            raw=1.0,
            ratio=value,
            low=low,
            high=high,
        )

    before.ratios = [ratio(0.70, 0.60, 0.80, 4000)]
    after.ratios = [ratio(0.85, 0.82, 0.90, 5000)]  # neither ratio inside the other bounds
    assert compare(before, after).ratios == (0, 1)
    after.ratios = [ratio(0.78, 0.72, 0.90, 5000)]
    comparison = compare(before, after)
    assert comparison.ratios == (1, 1)
    assert (
        "Library/raw ratios, the figures the targets judge: 1 of 1 (100%)" in comparison.markdown()
    )


def test_report_without_conformance_results_uses_the_declared_capabilities(
    tmp_path: Path,
) -> None:
    """With no conformance JSON, the capability matrix shows each backend's declared
    capabilities, marked as such, and the decision table still excludes a broker that
    cannot serve a workload: RabbitMQ publishes fastest here, but an event log needs
    replay, which it declares unsupported."""

    def point(backend: str, value: float) -> PointResult:
        return PointResult(
            target=f"{backend}/bus",
            backend=backend,
            side="bus",
            workload="batched_publish",
            params={"size": 1024},
            metrics={"msg_s": summarize([value, value, value])},
        )

    targets = [
        TargetResult(id=f"{b}/bus", backend=b, side="bus", url=f"{b}://")
        for b in ("rabbitmq", "redis")
    ]
    results = _results([point("rabbitmq", 90_000), point("redis", 50_000)], targets)
    report = write_report(results, tmp_path / "out", conformance_dir=tmp_path / "none")
    text = report.read_text()
    (event_log,) = [line for line in text.splitlines() if line.startswith("| Event log |")]
    assert "excluded (capability): RabbitMQ" in event_log
    assert "**Redis Streams**" in event_log
    (replay,) = [line for line in text.splitlines() if line.startswith("| `replay` |")]
    assert replay == "| `replay` | native\\* | unsupported\\* |"  # redis, rabbitmq
    assert "Declared, not proven: no conformance results for Redis Streams, RabbitMQ" in text
    assert "| conformance (pass/fail/skip) | not run | not run |" in text


def test_latency_runs_that_fell_behind_their_rate_are_named() -> None:
    """A paced publisher that sent under 95 % of its rate waited on its broker: the
    report says so beside the latency figures, the decision table marks the broker,
    and a comparison counts such figures among those that did not reproduce."""

    def point(side: str, rate: int, sent: list[float], p99: list[float]) -> PointResult:
        return PointResult(
            target=f"rabbitmq/{side}",
            backend="rabbitmq",
            side=side,
            workload="latency",
            params={"rate": rate, "size": 1024, "duration_s": 1.0},
            metrics={"sent_rate": summarize(sent), "p99_ms": summarize(p99)},
        )

    def results(points: list[PointResult]) -> Results:
        return _results(
            points,
            [
                TargetResult(id=f"rabbitmq/{side}", backend="rabbitmq", side=side, url="amqp://")
                for side in ("bus", "raw")
            ],
        )

    kept = point("bus", 500, [499, 500, 501], [4.0, 5.0, 6.0])
    behind = point("bus", 2000, [1400, 1480, 1900], [200.0, 380.0, 500.0])
    raw = point("raw", 2000, [1990, 1998, 2000], [5.0, 6.0, 7.0])
    assert not kept.fell_behind()
    assert not raw.fell_behind()
    assert behind.fell_behind()  # median 1,480 < 0.95 x 2,000
    assert not PointResult(
        target="redis/bus", backend="redis", side="bus", workload="consume_ack", params={}
    ).fell_behind()

    run = results([kept, behind, raw])
    text = render_markdown(run, {}, {})
    assert "**Fell behind the rate**" in text
    assert "RabbitMQ bus at 2,000/s sent a median 1,480/s" in text
    assert "RabbitMQ raw" not in text.split("**Fell behind the rate**")[1].split("\n")[0]
    assert "(bus fell behind the rate)" not in text  # no ratio to mark yet
    run.ratios = compute_ratios(run.points)
    (row,) = [line for line in render_markdown(run, {}, {}).splitlines() if "≤ 1.5" in line]
    assert row.startswith("| RabbitMQ | ")
    assert "not judged (target ≤ 1.5; bus fell behind the rate)" in row  # the ratio's cell
    (low_latency,) = [r for r in decision_rows(run, {}) if r[0] == "Low latency"]
    assert low_latency[2] == "**RabbitMQ** (fell behind the rate)"
    assert "**Fell behind the rate**" not in render_markdown(results([kept, raw]), {}, {})

    previous = results([point("bus", 2000, [1990, 1995, 2000], [5.0, 6.0, 7.0])])
    text = compare(previous, results([behind])).markdown()
    assert "Of the 1 that did not" in text
    assert "1 are latencies of a backend that fell behind the rate in either run" in text
    assert "fell behind" not in compare(previous, previous).markdown()


def test_cost_meter_measures_a_process_tree(tmp_path: Path) -> None:
    """CPU and peak RSS of a process and its child, the child's memory included."""
    psutil = pytest.importorskip("psutil")
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    # the child holds 150 MiB (touched, so resident); the parent burns CPU until told
    child = (
        "import pathlib,sys,time; b=bytearray(150*2**20); b[::4096]=bytes(len(b[::4096]));"
        "pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )
    parent = (
        "import os,subprocess,sys\n"
        "c=subprocess.Popen([sys.executable,'-c',sys.argv[1],sys.argv[2]])\n"
        "while not os.path.exists(sys.argv[3]): pass\n"
        "c.kill()"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent, child, str(ready), str(stop)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never allocated"
            time.sleep(0.02)
        meter = CostMeter(psutil.Process(proc.pid), interval=0.05)
        with meter:
            time.sleep(0.5)
        assert meter.sample is not None
        assert meter.sample.peak_rss_mb >= 150
        assert meter.sample.cpu_s >= 0.1
    finally:
        stop.touch()
        try:
            proc.wait(10)
        finally:
            proc.kill()


def test_chance_share_is_the_ceiling_of_random_variation() -> None:
    # rank-based criterion (this run's median inside the previous run's min-max):
    # known values for a few run counts, and it only grows
    shares = [chance_share(n) for n in (2, 3, 4, 6)]
    assert shares == sorted(shares)
    assert shares[1] == pytest.approx(0.60, abs=0.02)
    assert shares[2] == pytest.approx(0.77, abs=0.02)
    assert shares[3] == pytest.approx(0.91, abs=0.01)


@pytest.mark.broker("redis")
async def test_envelope_cost_compares_bare_enveloped_and_library(redis_broker: Broker) -> None:
    from backends.redis_streams.entries import from_fields, to_fields
    from benchmarks.drivers.base import envelope_message
    from benchmarks.drivers.raw_redis import RedisRawDriver
    from benchmarks.envelope import SIDES, envelope_cost, markdown

    # the enveloped raw side writes exactly the fields the library writes, with a
    # fresh id and time per message, and the library decodes what it wrote
    library_fields = to_fields(envelope_message("env.check"))
    driver = RedisRawDriver("redis", redis_broker.url, enveloped=True)
    await driver.open()
    try:
        await driver.publish("env.check", b"payload")
        await driver.publish_batch("env.check", [b"second"])
        entries = await driver.r.xrange(driver.key("env.check"))
        assert [f[b"bus-data"] for _, f in entries] == [b"payload", b"second"]
        for _, fields in entries:
            assert list(fields) == [str(n).encode() for n in library_fields[::2]]
        messages = [
            from_fields("env.check", entry_id.decode(), list(itertools.chain(*f.items())))[0]
            for entry_id, f in entries
        ]
        assert [m.data for m in messages] == [b"payload", b"second"]
        assert messages[0].id != messages[1].id
        assert messages[0].source == "bench"
        assert messages[0].time <= messages[1].time
    finally:
        await driver.cleanup(["env.check"], [])
        await driver.close()

    rows = await envelope_cost("redis", redis_broker.url, rounds=2, confirmed=5, batches=2, batch=5)
    assert [r.workload for r in rows] == ["confirmed", "batched", "consume"]
    for row in rows:
        assert all(len(row.runs[side]) == 2 and min(row.runs[side]) > 0 for side in SIDES)
    table = markdown(rows)
    assert table.count("| redis |") == 3
    assert "bus / raw+envelope" in table


@pytest.mark.broker("rabbitmq")
async def test_envelope_cost_on_rabbitmq_sends_the_library_properties(
    rabbitmq_broker: Broker,
) -> None:
    import uuid

    from backends.rabbitmq._wire import encode
    from benchmarks.drivers.base import envelope_message
    from benchmarks.drivers.raw_rabbitmq import RabbitRawDriver
    from benchmarks.envelope import SIDES, envelope_cost

    # the enveloped raw side sends the properties and header names the library
    # sends, with a fresh id (property and header alike) per message
    topic = f"env.check.{uuid.uuid4().hex[:8]}"
    library = encode(envelope_message(topic))
    driver = RabbitRawDriver("rabbitmq", rabbitmq_broker.url, enveloped=True)
    await driver.open()
    try:
        await driver.declare(topic, ["g"])
        await driver.publish(topic, b"payload")
        await driver.publish_batch(topic, [b"second"])
        conn = driver._conn
        assert conn is not None
        channel = await conn.channel()
        queue = await channel.get_queue(driver.queue_name(topic, "g"))
        got = [await queue.get(timeout=5, no_ack=True) for _ in range(2)]
        await channel.close()
        assert [m.body for m in got] == [b"payload", b"second"]
        for m in got:
            sent = {name for name in m.headers if not name.startswith("x-")}  # broker's own
            assert sent == set(library.headers or {})
            assert (m.content_type, m.delivery_mode) == (library.content_type, 2)
            assert m.message_id == m.headers["ce-id"]
            assert m.headers["ce-source"] == "bench"
            assert m.timestamp is not None
        assert got[0].message_id != got[1].message_id
    finally:
        await driver.cleanup([topic], ["g"])
        await driver.close()

    rows = await envelope_cost(
        "rabbitmq", rabbitmq_broker.url, rounds=1, confirmed=5, batches=1, batch=5
    )
    assert [r.workload for r in rows] == ["confirmed", "batched", "consume"]
    for row in rows:
        assert all(len(row.runs[side]) == 1 and min(row.runs[side]) > 0 for side in SIDES)


@pytest.mark.broker("redis")
def test_bench_smoke_memory_and_redis(redis_broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = ["memory://", redis_broker.url, "--profile", "quick", "--out", str(out), "--quiet"]
    for item in TINY:
        argv += ["--set", item]
    code = main(argv)
    assert code in (0, 1)  # 1: some workload failed (checked below for the harness's sides)

    data = json.loads((out / "results.json").read_text())
    assert data["schema"] == "bus-bench/1"
    assert data["profile"] == "quick"
    assert data["environment"]["cpu_count"] >= 1
    assert "redis" in data["environment"]["packages"]
    # on by default: held, or said why not (no root, no PM QoS)
    assert data["environment"]["poll_idle"].split(":")[0] in ("on", "unavailable")
    results = Results.read(out / "results.json")
    ids = {t.id for t in results.targets}
    assert {"memory/bus", "redis/raw", "redis/bus"} <= ids
    redis_raw = next(t for t in results.targets if t.id == "redis/raw")
    assert redis_raw.status == "ok"
    assert redis_raw.broker.get("implementation") == "Redis"

    for target in ("memory/bus", "redis/raw"):
        points = [p for p in results.points if p.target == target]
        assert not [p.error for p in points if p.error], target
        workloads = {p.workload for p in points}
        expected = set(results.config["workloads"]) - ({"rpc"} if target.endswith("raw") else set())
        assert expected <= workloads, target
        for p in points:
            for summary in p.metrics.values():
                assert summary.min <= summary.median <= summary.max
                assert len(summary.runs) >= 1
        # rounds=2, runs=2: one run per round, merged into one figure
        consume = next(p for p in points if p.workload == "consume_ack")
        assert len(consume.metrics["msg_s"].runs) == 2, target
    # run-length floor: both sides of a backend measured the same, sized count
    counts = {
        p.target: p.params["count"]
        for p in results.points
        if p.workload == "consume_ack" and p.backend == "redis"
    }
    assert counts["redis/raw"] == counts["redis/bus"]
    # sized by the first warm-up run: up to 4x more, or down to a quarter (max_run_s)
    assert 60 // 4 <= counts["redis/raw"] <= 4 * 60
    assert any(r.workload == "consume_ack" and r.backend == "redis" for r in results.ratios)
    # the job round trip is never sized: its latencies grow with the burst's count
    jobs = {p.target: p.params["count"] for p in results.points if p.workload == "job_roundtrip"}
    assert jobs == {"memory/bus": 30, "redis/raw": 30, "redis/bus": 30}
    # one machine-speed reading per backend and round, before the backend's pass
    assert sorted((p.backend, p.round) for p in results.probes) == [
        (b, r) for b in ("memory", "redis") for r in (0, 1)
    ]
    assert all(p.items_s > 0 for p in results.probes)
    latency = results.find("redis", "raw", "latency", rate=200)[0]
    assert {"p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"} <= set(latency.metrics)
    assert latency.curve_ms
    # the latency runs last 0.3 s: long enough for the contention figures
    assert latency.other_load_pct is not None
    assert latency.steal_pct is not None
    assert 0 <= latency.steal_pct.min <= latency.steal_pct.max <= 100

    report = (out / "report.md").read_text()
    assert report.startswith("# Broker decision report")
    assert "## Which broker for which workload" in report
    assert "## Library overhead against each raw client" in report
    assert "## Caveats" in report
    assert "(steal time)" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "throughput.png" in pngs
    assert all((out / name).stat().st_size > 1000 for name in pngs)


def test_bus_bench_dispatches_to_the_benchmarks(capsys: pytest.CaptureFixture[str]) -> None:
    from bus.cli import main as bus_main

    assert bus_main(["bench", "--profile", "full", "--show-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["profile"] == "full"
    assert shown["latency"]["rates"] == [500, 2000, 10_000]
    assert bus_main(["bench", "--set", "no.such=1"]) == 2


# -- reviewed defects (issue 7 findings 4, 6, 8-12) ---------------------------------------

#: A run of one tiny workload on memory:// (no broker, no root).
SMALL = [
    "workloads=confirmed_publish",
    "runs=1",
    "rounds=1",
    "warmup_runs=0",
    "confirmed_publish.count=5",
    "poll_idle=false",
]


async def test_one_broker_is_measured_once_and_brokers_of_one_kind_get_unique_ids() -> None:
    """Two URLs of one broker (`--all` and the same Redis with its default database
    spelled out, or a local name) are one plan, with a warning; two brokers of one
    kind get ids ``redis`` and ``redis#2`` in every place a backend is named, so
    their figures and ratios never mix."""
    from benchmarks.runner import BackendPlan, dedupe_plans, plan_urls, run_benchmarks

    provisioned = BackendPlan("redis", "redis://127.0.0.1:6379", origin="found")
    failed = BackendPlan("kafka", "kafka://", origin="unavailable", reason="no tansu")
    plans, warnings = dedupe_plans(
        [
            provisioned,
            failed,
            *plan_urls(
                [
                    "redis://127.0.0.1:6379/0",  # the same broker and database
                    "redis://localhost",  # again
                    "redis://127.0.0.1:6380",  # another broker
                    "redis://127.0.0.1:6379/1",  # another database
                    "kafka://10.0.0.9:9092",  # a Kafka that is there
                    "amqp://guest:secret@127.0.0.1:5672/",  # vhost "/", as below
                    "amqp://guest:secret@localhost",
                ]
            ),
        ]
    )
    assert [(p.id, p.url) for p in plans] == [
        ("redis", "redis://127.0.0.1:6379"),  # the first keeps the kind as its id
        ("redis#2", "redis://127.0.0.1:6380"),
        ("redis#3", "redis://127.0.0.1:6379/1"),
        ("kafka", "kafka://10.0.0.9:9092"),  # the failed provisioning gave way
        ("rabbitmq", "amqp://guest:secret@127.0.0.1:5672/"),
    ]
    assert len(warnings) == 4
    assert not any("secret" in w for w in warnings)

    # a run: two in-process brokers of one kind, and the first again
    config = apply_overrides(profile("quick"), SMALL)
    results = await run_benchmarks(plan_urls(["memory://a", "memory://a", "memory://b"]), config)
    assert [(t.id, t.backend) for t in results.targets] == [
        ("memory/bus", "memory"),
        ("memory#2/bus", "memory#2"),
    ]
    assert sorted((p.target, p.backend) for p in results.points) == [
        ("memory#2/bus", "memory#2"),
        ("memory/bus", "memory"),
    ]
    assert sorted(p.backend for p in results.probes) == ["memory", "memory#2"]
    assert results.warnings == ["memory: memory://a is the broker of memory://a: measured once"]

    # ratios pair the sides of one broker only
    def point(backend: str, side: str, value: float) -> PointResult:
        return PointResult(
            target=f"{backend}/{side}",
            backend=backend,
            side=side,  # type: ignore[arg-type]
            workload="consume_ack",
            params={"size": 1024},
            metrics={"msg_s": summarize([value] * 3)},
        )

    ratios = compute_ratios(
        [
            point("redis", "raw", 200.0),
            point("redis", "bus", 140.0),
            point("redis#2", "raw", 100.0),
            point("redis#2", "bus", 90.0),
        ]
    )
    assert sorted((r.backend, r.ratio) for r in ratios) == [("redis", 0.7), ("redis#2", 0.9)]


async def test_cleanup_and_close_are_bounded_and_so_is_the_workload(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that stops answering hangs neither the workload (cut off at twice
    ``workload_timeout_s``, said so) nor its clean-up or the final close (each given
    ``cleanup_timeout_s``, then abandoned with a warning)."""
    import asyncio

    import benchmarks.runner as runner
    from benchmarks.drivers.base import Consumer, Driver

    class Stalled(Driver):
        side = "raw"

        async def _forever(self) -> None:
            await asyncio.Event().wait()

        async def open(self) -> None:
            pass

        async def close(self) -> None:
            await self._forever()

        async def declare(self, topic: str, groups: Sequence[str]) -> None:
            pass

        async def publish(self, topic: str, payload: bytes) -> None:
            await self._forever()

        async def publish_batch(self, topic: str, payloads: Sequence[bytes]) -> None:
            await self._forever()

        def consumer(self, topic: str, group: str, prefetch: int) -> Consumer:
            raise NotImplementedError

        async def cleanup(self, topics: Sequence[str], groups: Sequence[str]) -> None:
            await self._forever()

    monkeypatch.setattr(
        runner, "raw_factory", lambda backend, url, config: lambda: Stalled(backend, url)
    )
    config = apply_overrides(
        profile("quick"), [*SMALL, "workload_timeout_s=0.2", "cleanup_timeout_s=0.2"]
    )
    results = await asyncio.wait_for(
        runner.run_benchmarks(runner.plan_urls(["memory://"]), config), 30
    )
    (stalled,) = [p for p in results.points if p.target == "memory/raw"]
    assert stalled.error == ("TimeoutError: the workload took over 0.4 s (2 x workload_timeout_s)")
    assert [w.split(":")[0] for w in results.warnings] == [
        "cleanup after memory/raw confirmed_publish",
        "closing memory/raw",
    ]
    assert all("gave up after 0.2 s" in w for w in results.warnings)
    (library,) = [p for p in results.points if p.target == "memory/bus"]
    assert library.error is None


def test_bench_exit_status_says_whether_every_target_was_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 (after writing the results) when a target could not connect; a missing
    ``--compare`` or ``--report-only`` file is bad usage (2), found before measuring."""
    small = [arg for item in SMALL for arg in ("--set", item)]
    out = tmp_path / "a"
    assert main(["foo://nowhere", *small, "--quiet", "--out", str(out)]) == 1
    (target,) = Results.read(out / "results.json").targets
    assert target.status == "error"
    assert (out / "report.md").exists()

    missing = tmp_path / "nope.json"
    out = tmp_path / "b"
    assert main(["memory://", *small, "--quiet", "--out", str(out), "--compare", str(missing)]) == 2
    assert not out.exists()  # nothing was measured
    assert f"--compare {missing}: No such file or directory" in capsys.readouterr().err
    assert main(["--report-only", str(missing), "--out", str(tmp_path / "c")]) == 2
    assert f"--report-only {missing}" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{}")
    assert main(["--report-only", str(tmp_path / "junk.json"), "--out", str(tmp_path)]) == 2
    assert "not a results file" in capsys.readouterr().err
    # a clean run still exits 0
    assert main(["memory://", *small, "--quiet", "--out", str(tmp_path / "d")]) == 0


@pytest.mark.parametrize(
    "setting",
    [
        "scaling.consumers=0",
        "sizes.sizes=0",
        "latency.rates=0",
        "latency.rates=-5",
        "latency.rates=500,0",
        "latency.rates=[]",
        "scaling.consumers=[]",
        "sizes.sizes=[]",
        "workloads=[]",
    ],
)
def test_list_settings_need_items_of_at_least_one(setting: str) -> None:
    key = setting.partition("=")[0]
    with pytest.raises(ValueError, match=f"invalid settings: {key}"):
        apply_overrides(profile("quick"), [setting])


async def test_library_options_by_kind_or_scheme_and_what_the_sides_used() -> None:
    """``library_options`` is keyed by broker kind or URL scheme; one that overrides a
    setting the raw side shares is warned about and recorded; settings decided per
    broker (Kafka's session timeout on Tansu) are written into the results' config."""
    from benchmarks.progress import Progress
    from benchmarks.runner import (
        BackendPlan,
        _Backend,
        _decided_config,
        _open_backend,
        for_broker,
        library_options,
    )

    config = apply_overrides(
        profile("quick"),
        [
            "library_options.amqp.publish_window=10",  # by scheme
            "library_options.rabbitmq.publish_window=5",  # by kind: the scheme wins
            "library_options.rabbitmq.prefetch_max=7",
            "library_options.kafka.fetch_max_wait_ms=500",  # the raw side uses 10
        ],
    )
    options, differs = library_options("rabbitmq", "amqp://127.0.0.1", config)
    assert (options["publish_window"], options["prefetch_max"]) == (10, 7)
    assert differs == {}
    options, differs = library_options("kafka", "kafka://127.0.0.1:9092", config)
    assert options["fetch_max_wait_ms"] == 500
    assert differs == {"fetch_max_wait_ms": {"bus": 500, "raw": 10}}

    targets: list[TargetResult] = []
    warnings: list[str] = []
    plan = BackendPlan("kafka", "kafka://127.0.0.1:1", origin="unavailable", reason="no broker")
    await _open_backend(plan, config, Progress(0, enabled=False), targets, warnings.append)
    bus_side = next(t for t in targets if t.side == "bus")
    assert bus_side.settings["differs_from_raw"] == differs
    assert warnings == [
        "kafka: library option fetch_max_wait_ms=500 overrides the raw side's 10: "
        "the two sides do not run with the same settings"
    ]

    def opened(plan: BackendPlan, implementation: str) -> _Backend:
        decided = for_broker(config, plan, {"implementation": implementation})
        return _Backend(plan, [], None, decided)

    tansu = opened(plan, "Tansu (Kafka protocol, memory storage)")
    recorded = _decided_config(config, [tansu], warnings.append)
    assert recorded["kafka"]["session_timeout_ms"] == 2000
    assert config.kafka.session_timeout_ms is None  # decided per broker, not given
    other = opened(BackendPlan("kafka", "kafka://10.0.0.9", id="kafka#2"), "Kafka protocol")
    warnings.clear()
    recorded = _decided_config(config, [tansu, other], warnings.append)
    assert recorded["kafka"]["session_timeout_ms"] is None
    assert warnings == [
        "kafka.session_timeout_ms decided per broker: {'kafka': 2000, 'kafka#2': 6000}"
    ]


async def test_raw_kafka_cleanup_deletes_its_consumer_groups() -> None:
    """The raw Kafka side deletes its run's consumer groups (DeleteGroups to each
    group's coordinator, as the library backend does), not only its topics."""
    from benchmarks.config import Kafka
    from benchmarks.drivers.raw_kafka import KafkaRawDriver

    calls: list[tuple[str, object]] = []

    class Response:
        def __init__(self, results: list[tuple[str, int]]) -> None:
            self.results = results

    class Admin:
        refuse: set[str] = set()

        async def delete_topics(self, topics: list[str]) -> None:
            calls.append(("delete_topics", topics))

        async def find_coordinator(self, group: str) -> int:
            return 1 if group.endswith("1") else 2

        async def _send_request_to_node(self, node: int, request: object) -> Response:
            names = list(request._group_names)  # type: ignore[attr-defined]
            calls.append((f"{type(request).__name__} to {node}", names))
            return Response([(n, 68 if n in self.refuse else 0) for n in names])

    driver = KafkaRawDriver("kafka", "kafka://127.0.0.1:9092", Kafka())
    admin = Admin()
    driver._admin = admin  # type: ignore[assignment]
    await driver.cleanup(["bench.x.raw.ca"], ["g-x-1", "g-x-2", "g-y-1"])
    assert calls == [
        ("delete_topics", ["bench.x.raw.ca"]),
        ("DeleteGroupsRequest to 1", ["g-x-1", "g-y-1"]),
        ("DeleteGroupsRequest to 2", ["g-x-2"]),
    ]
    admin.refuse = {"g-x-2"}
    with pytest.raises(RuntimeError, match=r"g-x-2 \(error 68\)"):
        await driver.cleanup([], ["g-x-2"])


def test_a_ratio_over_rounds_one_side_failed_is_partial() -> None:
    """A workload that failed in round 2 on the library side only: its figures hold
    rounds 1 and 3, the raw client's rounds 1-3, so their ratio is marked partial
    and not judged; when both sides failed in the same round it is not partial."""
    from benchmarks.runner import _summarize

    def run(side: str, failing: set[int]) -> list[PointResult]:
        target = TargetResult(id=f"redis/{side}", backend="redis", side=side, url="x")  # type: ignore[arg-type]
        rounds: list[Point] = []
        for r in range(3):
            if r in failing:
                rounds.append(
                    Point(
                        "consume_ack",
                        {},
                        notes=[f"failed in round {r + 1} of 3"],
                        error="TimeoutError: only 10 of 1000 messages within 120s",
                    )
                )
            else:
                value = 100.0 if side == "bus" else 110.0
                rounds.append(Point("consume_ack", {"size": 1024}, {"msg_s": [value, value]}))
        return [_summarize(p, target) for p in merge_rounds(rounds)]

    (ratio,) = compute_ratios(run("bus", {1}) + run("raw", set()))
    assert ratio.partial == "bus failed in round 2 of 3, raw in no round"
    assert ratio.verdict == "inconclusive"  # 0.91 would meet 0.7 on the figures alone
    (ratio,) = compute_ratios(run("bus", {1}) + run("raw", {1}))
    assert (ratio.partial, ratio.verdict) == ("", "meets")
