"""What the benchmark figures count and how the report judges them: latency runs that
share a topic, messages that never arrive, ratios whose runs fell behind their rate,
and decisions drawn only from the library's own figures. No timing assertions."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.report import decision_rows, render_markdown
from benchmarks.results import PointResult, Ratio, Results, TargetResult
from benchmarks.stats import summarize
from benchmarks.workloads import Context


async def test_latency_runs_ignore_late_messages_of_earlier_runs_and_count_lost_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Latency runs share a topic and consumer: a message of an earlier run arriving
    late is acked but neither counted nor timed; a message that never arrives is
    counted as lost at the run's timeout, so a run that receives nothing does not
    report 0 ms."""
    from benchmarks import workloads
    from benchmarks.config import BenchConfig
    from benchmarks.drivers.library import LibraryDriver

    config = BenchConfig()
    driver = LibraryDriver("memory", "memory://latency-tags")
    await driver.open()
    try:
        ctx = Context(config, driver, lambda: driver, run_id="t", broker_proc=None)
        await driver.declare("lat", ["g"])
        consumer = driver.consumer("lat", "g", 64)
        await consumer.open()
        # five messages of an "earlier run": intended send time 0 (hours ago), other tag
        stale = (0).to_bytes(8, "big") + b"\xff" * 8 + bytes(100)
        for _ in range(5):
            await driver.publish("lat", stale)
        m = await workloads._latency_run(
            ctx, consumer, "lat", rate=200, duration_s=0.1, merged=None
        )
        assert m["lost"] == 0
        assert m["max_ms"] < 5_000, "a stale message's latency was counted"

        # nothing arrives: the consumer reads another topic
        monkeypatch.setattr(workloads, "LATENCY_GRACE_S", 0.2)
        await driver.declare("elsewhere", ["g"])
        deaf = driver.consumer("elsewhere", "g", 64)
        await deaf.open()
        m = await workloads._latency_run(ctx, deaf, "lat", rate=100, duration_s=0.1, merged=None)
        assert m["lost"] == 10
        assert m["p50_ms"] >= 400, m  # counted at the timeout (0.5 s), not as 0 ms
        await deaf.close()
        await consumer.close()
    finally:
        await driver.close()


def _latency_point(backend: str, side: str, sent: list[float], p99: list[float]) -> PointResult:
    return PointResult(
        target=f"{backend}/{side}",
        backend=backend,
        side=side,  # type: ignore[arg-type]
        workload="latency",
        params={"rate": 2000, "size": 1024, "duration_s": 1.0},
        metrics={"sent_rate": summarize(sent), "p99_ms": summarize(p99)},
    )


def _results(points: list[PointResult], backends: list[str]) -> Results:
    return Results(
        profile="quick",
        command=["bus", "bench"],
        started="2026-12-01T00:00:00+00:00",
        duration_s=1.0,
        config={},
        environment={},
        targets=[
            TargetResult(id=f"{b}/{side}", backend=b, side=side, url=f"{b}://")  # type: ignore[arg-type]
            for b in backends
            for side in ("bus", "raw")
        ],
        points=points,
    )


def test_a_latency_ratio_whose_raw_side_fell_behind_is_not_judged() -> None:
    """The raw client sent 1,400 of 2,000 msg/s: its p99 is a growing queue's, so the
    library's much lower p99 proves nothing: the cell says so, and the target is not
    counted as met."""
    bus_side = _latency_point("rabbitmq", "bus", [1990, 1995, 2000], [40, 45, 50])
    raw_side = _latency_point("rabbitmq", "raw", [1300, 1400, 1500], [300, 380, 420])
    results = _results([bus_side, raw_side], ["rabbitmq"])
    results.ratios = [
        Ratio(
            backend="rabbitmq",
            workload="latency",
            params={"rate": 2000, "size": 1024, "duration_s": 1.0},
            metric="p99_ms",
            bus=45,
            raw=380,
            ratio=45 / 380,
            low=40 / 420,
            high=50 / 300,
            target=1.5,
            better="lower",
            meets=True,
            verdict="meets",
        )
    ]
    text = render_markdown(results, {}, {})
    # the first RabbitMQ row is the ratio table's (the latency tables follow)
    row = next(line for line in text.splitlines() if line.startswith("| RabbitMQ | "))
    assert "not judged (target ≤ 1.5; raw fell behind the rate)" in row
    assert "✅" not in row
    assert "Targets met" not in text


def test_the_decision_table_ranks_library_figures_only() -> None:
    """A backend whose library run produced no figure is named as such, and its raw
    client's figure does not win in its place."""

    def jobs(backend: str, side: str, value: float) -> PointResult:
        return PointResult(
            target=f"{backend}/{side}",
            backend=backend,
            side=side,  # type: ignore[arg-type]
            workload="job_roundtrip",
            params={},
            metrics={"jobs_s": summarize([value] * 3)},
        )

    results = _results(
        [jobs("redis", "bus", 17_500), jobs("nats", "raw", 31_000)], ["redis", "nats"]
    )
    (job_queue,) = [r for r in decision_rows(results, {}) if r[0] == "Job queue"]
    assert job_queue[2] == "**Redis Streams**"
    assert "no library figure: NATS JetStream" in job_queue[1]


def test_a_figure_reproduces_only_inside_the_previous_runs_spread() -> None:
    """The previous report said 100 (90-110); a run at 200 (100-300) did not reproduce
    it, though the previous median lies inside the new, wider spread (the laxer test
    used before counted it)."""
    from benchmarks.compare import compare

    def run(values: list[float]) -> Results:
        point = PointResult(
            target="redis/bus",
            backend="redis",
            side="bus",
            workload="consume_ack",
            params={"size": 1024},
            metrics={"msg_s": summarize(values)},
        )
        return _results([point], ["redis"])

    assert compare(run([90, 100, 110]), run([100, 200, 300])).reproduced == 0
    assert compare(run([90, 100, 110]), run([95, 105, 130])).reproduced == 1


def test_a_common_shift_of_every_figure_is_told_apart_from_each_figures_noise() -> None:
    """Every figure 5 % faster (latencies 5 % lower) and each spread +-2 %: none
    reproduces, and the comparison says that the machine moved them all by 5 %, within
    which each reproduces; one figure that moved on its own stays outside."""
    from benchmarks.compare import compare

    def run(speed: float, odd: float = 1.0) -> Results:
        points = [
            PointResult(
                target=f"redis/{side}",
                backend="redis",
                side=side,
                workload=workload,
                params={"size": 1024},
                metrics={
                    metric: summarize(
                        [v * (1 / speed if metric.endswith("_ms") else speed) for v in values]
                    )
                },
            )
            for side in ("bus", "raw")
            for workload, metric, values in (
                ("consume_ack", "msg_s", [980.0, 1000.0, 1020.0]),
                ("confirmed_publish", "msg_s", [490.0, 500.0, 510.0]),
                ("rpc", "p99_ms", [1.96, 2.0, 2.04]),
            )
        ]
        points.append(
            PointResult(
                target="redis/bus",
                backend="redis",
                side="bus",
                workload="fanout",
                params={"size": 1024},
                metrics={"deliveries_s": summarize([v * speed * odd for v in (98, 100, 102)])},
            )
        )
        return _results(points, ["redis"])

    comparison = compare(run(1.0), run(1.05, odd=1.5))
    assert comparison.reproduced == 0
    assert comparison.shift == pytest.approx(1.05)
    assert comparison.reproduced_shifted == 6  # all but the fan-out, which moved on its own
    text = comparison.markdown()
    assert "ran a median 5.0% faster than in the previous run (7 of 7 moved that way)" in text
    assert "6 of 7 (86%) lie inside the previous run's min-max" in text
    slower = compare(run(1.0), run(1 / 1.05))
    assert slower.reproduced_shifted == 7
    assert "4.8% slower" in slower.markdown()  # 1 / 1.05


async def test_a_backlog_drain_opens_its_consumers_on_the_clock() -> None:
    """Consumers of a cheap-join backend are opened by the drain itself, after its
    clock started: a consumer that starts receiving when it opens (the library's
    RabbitMQ subscription) no longer buffers part of the backlog before the clock,
    while the raw client's starts in run()."""
    from benchmarks.brokercost import CostMeter
    from benchmarks.drivers.library import LibraryDriver
    from benchmarks.workloads import drain

    driver = LibraryDriver("memory", "memory://drain-open")
    await driver.open()
    try:
        await driver.declare("backlog", ["g"])
        for i in range(50):
            await driver.publish("backlog", i.to_bytes(16, "big"))
        consumer = driver.consumer("backlog", "g", 10)  # not opened: drain opens it
        seen: list[int] = []

        def record(body: bytes) -> bool:
            seen.append(int.from_bytes(body, "big"))
            return True

        elapsed = await drain(
            [consumer], 50, CostMeter(None), 10.0, on_payload=record, open_first=True
        )
        await consumer.close()
    finally:
        await driver.close()
    assert sorted(seen) == list(range(50))
    assert elapsed > 0


def test_the_tansu_label_belongs_to_the_run_that_used_tansu(tmp_path: Path) -> None:
    """Reports of two runs written by one process: the second, on another Kafka, is not
    labelled Tansu (nor given Tansu's caveat) because the first was."""
    from benchmarks.report import write_report

    def run(implementation: str) -> Results:
        results = _results([], ["kafka"])
        for t in results.targets:
            t.broker = {"implementation": implementation}
        return results

    out = tmp_path
    tansu = write_report(run("Tansu 0.6"), out / "a", conformance_dir=out / "none").read_text()
    kafka = write_report(run("Apache Kafka 3.7"), out / "b", conformance_dir=out / "none")
    assert "Kafka (Tansu)" in tansu
    assert "Tansu" not in kafka.read_text()


def test_the_report_shows_the_runs_warnings_and_does_not_judge_a_partial_ratio() -> None:
    results = _results([], ["redis"])
    results.warnings = ["redis://127.0.0.1:6379/0 and redis://localhost:6379/0: measured once"]
    results.ratios = [
        Ratio(
            backend="redis",
            workload="consume_ack",
            params={"size": 1024},
            metric="msg_s",
            bus=70.0,
            raw=100.0,
            ratio=0.7,
            low=0.6,
            high=0.8,
            target=0.7,
            meets=True,
            verdict="inconclusive",
            partial="bus failed in round 2 of 3, raw in no round",
        )
    ]
    text = render_markdown(results, {}, {})
    assert "## Warnings of this run" in text
    assert "- redis://127.0.0.1:6379/0 and redis://localhost:6379/0: measured once" in text
    row = next(line for line in text.splitlines() if line.startswith("| Redis Streams | "))
    assert "not judged (target ≥ 0.7; bus failed in round 2 of 3, raw in no round)" in row
    assert "Targets met" not in text
