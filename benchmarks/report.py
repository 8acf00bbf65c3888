"""The decision report: Markdown plus PNG charts, computed from ``results.json`` and
the conformance results (``bus-results/conformance-<scheme>.json``).

It opens with the table a platform team decides from (which broker for which
workload, each figure with its spread), then the library's overhead against each
raw client (the ratios the library is judged on), the capability matrix, the
detailed figures and charts, the broker cost, the caveats and the environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.config import WORKLOADS
from benchmarks.results import KEPT_UP, PointResult, Ratio, Results
from benchmarks.stats import Summary

__all__ = ["load_conformance", "write_report"]

BACKENDS = ("memory", "redis", "rabbitmq", "nats", "kafka")
_LABEL = {
    "memory": "memory",
    "redis": "Redis Streams",
    "rabbitmq": "RabbitMQ",
    "nats": "NATS JetStream",
    "kafka": "Kafka",
}
#: The URL scheme ``bus conformance URL`` names its JSON file after.
_SCHEME = {
    "memory": "memory",
    "redis": "redis",
    "rabbitmq": "amqp",
    "nats": "nats",
    "kafka": "kafka",
}
_WORKLOAD_TITLE = {
    "confirmed_publish": "confirmed publish",
    "batched_publish": "batched publish",
    "consume_ack": "consume + ack",
    "latency": "end-to-end latency",
    "latency_ramp": "max sustainable rate",
    "fanout": "fan-out",
    "scaling": "competing consumers",
    "sizes": "message sizes",
    "job_roundtrip": "job round trip",
    "rpc": "request/reply",
}
FEATURES = (
    "broadcast",
    "replay",
    "key_order",
    "delay",
    "nack_delay",
    "priority",
    "dead_letter",
    "lease",
    "request_reply",
    "no_responders",
)


def load_conformance(directory: Path, backends: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """The conformance JSON of each backend (None where the file is missing/unreadable)."""
    out: dict[str, dict[str, Any] | None] = {}
    for backend in backends:
        path = directory / f"conformance-{_SCHEME.get(backend, backend)}.json"
        try:
            out[backend] = json.loads(path.read_text())
        except (OSError, ValueError):
            out[backend] = None
    return out


def declared_conformance(backend: str) -> dict[str, Any] | None:
    """What ``backend`` declares it can do (``bus capabilities``), in the shape of a
    conformance JSON marked ``"declared": True`` and without scenario results; None
    when its client library is not installed. The report falls back on it where no
    conformance results exist, so a decision never recommends a broker for a workload
    it cannot serve (an event log on a broker without replay) just because
    ``bus conformance`` was not run first."""
    from bus.errors import ConfigurationError
    from bus.registry import resolve

    try:
        capabilities = resolve(f"{_SCHEME.get(backend, backend)}://").capabilities
    except ConfigurationError:  # a missing client library, or a scheme nobody registered
        return None
    return {
        "declared": True,
        "capabilities": {
            f.value: {"support": capabilities[f].support.value, "how": capabilities[f].how}
            for f in capabilities
        },
    }


# -- small helpers -------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(s: Summary | None, unit: str = "") -> str:
    if s is None:
        return "-"
    u = f" {unit}" if unit else ""
    if len(s.runs) <= 1:
        return f"{_fmt(s.median)}{u}"
    return f"{_fmt(s.median)}{u} ({_fmt(s.min)}-{_fmt(s.max)})"


def _human(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _label(backend: str) -> str:
    return _LABEL.get(backend, backend)


def _backends(results: Results) -> list[str]:
    seen = [t.backend for t in results.targets]
    ordered = [b for b in BACKENDS if b in seen]
    return ordered + sorted(set(seen) - set(ordered))


def _point(
    results: Results, backend: str, side: str, workload: str, **params: Any
) -> PointResult | None:
    for p in results.find(backend, side, workload, **params):
        if p.error is None:
            return p
    return None


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- the decision table ---------------------------------------------------------------


@dataclass
class _Criterion:
    profile: str
    question: str
    workload: str
    metric: str
    better: str
    unit: str
    params: dict[str, Any]
    requires: tuple[str, ...] = ()


CRITERIA = (
    _Criterion(
        "Job queue",
        "jobs/s through `bus.consume` with retries enabled",
        "job_roundtrip",
        "jobs_s",
        "higher",
        "jobs/s",
        {},
        ("dead_letter", "nack_delay"),
    ),
    _Criterion(
        "Job queue (drain a backlog)",
        "consume + ack msg/s, one member",
        "consume_ack",
        "msg_s",
        "higher",
        "msg/s",
        {},
    ),
    _Criterion(
        "Event log",
        "batched publish msg/s (needs replay)",
        "batched_publish",
        "msg_s",
        "higher",
        "msg/s",
        {},
        ("replay",),
    ),
    _Criterion(
        "RPC",
        "request/reply round trip p99 (lower wins)",
        "rpc",
        "p99_ms",
        "lower",
        "ms",
        {},
        ("request_reply",),
    ),
    _Criterion(
        "Fan-out",
        "deliveries/s to N groups",
        "fanout",
        "deliveries_s",
        "higher",
        "deliveries/s",
        {},
    ),
    _Criterion(
        "Low latency",
        "end-to-end p99 at 2,000 msg/s (lower wins)",
        "latency",
        "p99_ms",
        "lower",
        "ms",
        {"rate": 2000},
    ),
    _Criterion(
        "Confirmed publish",
        "one-at-a-time confirmed publish msg/s",
        "confirmed_publish",
        "msg_s",
        "higher",
        "msg/s",
        {},
    ),
)


def _capability_ok(
    conformance: dict[str, dict[str, Any] | None], backend: str, features: Sequence[str]
) -> bool | None:
    data = conformance.get(backend)
    if data is None:
        return None
    caps = data.get("capabilities", {})
    return all(caps.get(f, {}).get("support", "unsupported") != "unsupported" for f in features)


def decision_rows(
    results: Results, conformance: dict[str, dict[str, Any] | None]
) -> list[list[str]]:
    rows = []
    brokers = [b for b in _backends(results) if b != "memory"]
    for c in CRITERIA:
        candidates: list[tuple[str, Summary, str]] = []
        excluded = []
        failed: list[str] = []
        for backend in brokers:
            ok = _capability_ok(conformance, backend, c.requires) if c.requires else True
            if ok is False:
                excluded.append(_label(backend))
                continue
            marker = ""
            # the library's figure only: a raw client's is not what a user would run,
            # and ranking it beside library figures would hide a failed library run
            p = _point(results, backend, "bus", c.workload, **c.params)
            if p is None or p.metric(c.metric) is None:
                if any(t.backend == backend and t.side == "bus" for t in results.targets):
                    failed.append(_label(backend))
                continue
            if p.fell_behind():
                marker += " (fell behind the rate)"
            summary = p.metric(c.metric)
            assert summary is not None
            candidates.append((backend, summary, marker))
        reverse = c.better == "higher"
        candidates.sort(key=lambda x: x[1].median, reverse=reverse)
        note = f"; excluded (capability): {', '.join(excluded)}" if excluded else ""
        if failed:
            note += f"; no library figure: {', '.join(failed)}"
        if not candidates:
            rows.append([c.profile, c.question + note, "no data", "-", "-", "-"])
            continue
        win_b, win_s, win_m = candidates[0]
        runner = "-"
        margin = "only candidate"
        if len(candidates) > 1:
            run_b, run_s, run_m = candidates[1]
            runner = f"{_label(run_b)}{run_m}: {_cell(run_s, c.unit)}"
            if reverse:
                factor = win_s.median / run_s.median if run_s.median else float("inf")
                overlap = win_s.min <= run_s.max
            else:
                factor = run_s.median / win_s.median if win_s.median else float("inf")
                overlap = win_s.max >= run_s.min
            margin = f"{factor:.2f}x" + (" (spreads overlap: a tie)" if overlap else "")
        rows.append(
            [
                c.profile,
                c.question + note,
                f"**{_label(win_b)}**{win_m}",
                _cell(win_s, c.unit),
                runner,
                margin,
            ]
        )
    return rows


def _verdict(row: Sequence[str]) -> str:
    """A decision row's answer: the winner, or both brokers when their spreads overlap
    (a tie reads the same whichever of the two has the higher median)."""
    winner = row[2].replace("**", "")
    if "a tie" not in row[5]:
        return winner
    runner_up = row[4].split(":", 1)[0]
    return " = ".join(sorted((winner, runner_up))) + " (tie)"


# -- charts ---------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_COLORS = {
    "memory": "#7f7f7f",
    "redis": "#d62728",
    "rabbitmq": "#ff7f0e",
    "nats": "#2ca02c",
    "kafka": "#1f77b4",
}


def _chart_throughput(results: Results, out: Path) -> str | None:
    panels = [
        ("confirmed_publish", "msg_s", "confirmed publish (msg/s)"),
        ("batched_publish", "msg_s", "batched publish (msg/s)"),
        ("consume_ack", "msg_s", "consume + ack (msg/s)"),
        ("fanout", "deliveries_s", "fan-out (deliveries/s)"),
        ("job_roundtrip", "jobs_s", "job round trip (jobs/s)"),
    ]
    backends = _backends(results)
    if not results.points:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    width = 0.38
    for ax, (workload, metric, title) in zip(axes, panels, strict=True):
        for j, side in enumerate(("bus", "raw")):
            xs, ys, lo, hi, colors = [], [], [], [], []
            for i, backend in enumerate(backends):
                p = _point(results, backend, side, workload)
                s = p.metric(metric) if p else None
                if s is None:
                    continue
                xs.append(i + (j - 0.5) * width)
                ys.append(s.median)
                lo.append(s.median - s.min)
                hi.append(s.max - s.median)
                colors.append(_COLORS.get(backend, "#333333"))
            if xs:
                ax.bar(
                    xs,
                    ys,
                    width,
                    yerr=[lo, hi],
                    color=colors,
                    alpha=1.0 if side == "bus" else 0.45,
                    hatch="" if side == "bus" else "//",
                    edgecolor="black",
                    linewidth=0.5,
                    capsize=3,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(backends)))
        ax.set_xticklabels([_label(b).split(" ")[0] for b in backends], rotation=30, fontsize=8)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="#bbbbbb", edgecolor="black", label="bus (library)"),
        Patch(facecolor="#bbbbbb", edgecolor="black", hatch="//", alpha=0.45, label="raw client"),
    ]
    axes[0].legend(handles=handles, fontsize=8, loc="upper right")
    fig.suptitle("Throughput: median of runs, bars = min-max; solid = library, hatched = raw")
    fig.tight_layout()
    name = "throughput.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _chart_latency(results: Results, out: Path) -> list[str]:
    rates = sorted(
        {
            int(p.params["rate"])
            for p in results.points
            if p.workload == "latency" and "rate" in p.params
        }
    )
    names: list[str] = []
    if not rates:
        return names
    plt = _plt()
    for rate in rates:
        fig, ax = plt.subplots(figsize=(8, 4.8))
        plotted = 0
        for backend in _backends(results):
            for side in ("bus", "raw"):
                p = _point(results, backend, side, "latency", rate=rate)
                if p is None or not p.curve_ms:
                    continue
                pts = [(pct, ms) for pct, ms in p.curve_ms if pct < 100]
                xs = [1 / (1 - pct / 100) for pct, _ in pts]
                ys = [max(ms, 0.001) for _, ms in pts]
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    markersize=3,
                    color=_COLORS.get(backend, "#333"),
                    linestyle="-" if side == "bus" else "--",
                    label=f"{_label(backend)} {'bus' if side == 'bus' else 'raw'}",
                )
                plotted += 1
        if not plotted:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [0, 50, 90, 99, 99.9, 99.99]
        ax.set_xticks([1 / (1 - t / 100) for t in ticks])
        ax.set_xticklabels([f"p{t:g}" for t in ticks])
        ax.set_ylabel("latency, ms (log)")
        ax.set_xlabel("percentile")
        ax.set_title(
            f"End-to-end latency at {rate:,} msg/s (from intended send time; solid = library)"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"latency_{rate}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def _chart_lines(
    results: Results,
    out: Path,
    *,
    workload: str,
    param: str,
    metrics: Sequence[tuple[str, str]],
    title: str,
    name: str,
    logx: bool = False,
) -> str | None:
    if not any(p.workload == workload for p in results.points):
        return None
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(6.0 * len(metrics) + 2.5, 4.5), squeeze=False
    )
    for ax, (metric, ylabel) in zip(axes[0], metrics, strict=True):
        for backend in _backends(results):
            for side in ("bus", "raw"):
                pts = sorted(
                    (
                        (p.params[param], p.metrics[metric])
                        for p in results.find(backend, side, workload)
                        if p.error is None and metric in p.metrics and param in p.params
                    ),
                    key=lambda x: x[0],
                )
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                ys = [s.median for _, s in pts]
                lo = [s.median - s.min for _, s in pts]
                hi = [s.max - s.median for _, s in pts]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=[lo, hi],
                    marker="o",
                    capsize=3,
                    color=_COLORS.get(backend, "#333"),
                    linestyle="-" if side == "bus" else "--",
                    label=f"{_label(backend)} {side}",
                )
        ax.set_xlabel(param)
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        if logx:
            ax.set_xscale("log", base=2)
        values = sorted({p.params[param] for p in results.points if param in p.params})
        if values and workload in ("sizes", "scaling"):
            ax.set_xticks(values)
            ax.set_xticklabels([_human(v) if param == "size" else str(v) for v in values])
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _chart_ratios(results: Results, out: Path) -> str | None:
    judged = [r for r in results.ratios if r.target is not None]
    if not judged:
        return None
    plt = _plt()
    workloads = ["confirmed_publish", "batched_publish", "consume_ack", "latency"]
    backends = [b for b in _backends(results) if any(r.backend == b for r in judged)]
    fig, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 4))
    for ax, workload in zip(axes, workloads, strict=True):
        rs = {r.backend: r for r in judged if r.workload == workload}
        xs = list(range(len(backends)))
        for i, backend in enumerate(backends):
            r = rs.get(backend)
            if r is None:
                continue
            color = "#2ca02c" if r.meets else "#d62728"
            ax.bar(
                i,
                r.ratio,
                color=color,
                yerr=[[max(0.0, r.ratio - r.low)], [max(0.0, r.high - r.ratio)]],
                capsize=3,
            )
        target = next((r.target for r in rs.values() if r.target is not None), None)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1)
        better = "lower is better" if workload == "latency" else "higher is better"
        ax.set_title(f"{_WORKLOAD_TITLE[workload]}\n(bus/raw, {better})", fontsize=9)
        ax.set_xticks(xs)
        ax.set_xticklabels([_label(b).split(" ")[0] for b in backends], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Library / raw client (dashed line = target; green = meets it)")
    fig.tight_layout()
    name = "ratios.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


# -- markdown sections ------------------------------------------------------------------


def _behind(results: Results, r: Ratio) -> list[str]:
    """The sides ("bus", "raw") of ratio ``r`` whose latency run fell behind its rate:
    their latencies are a growing queue's, so the ratio judges nothing."""
    return [
        side
        for side in ("bus", "raw")
        if (q := _point(results, r.backend, side, r.workload, **r.params)) and q.fell_behind()
    ]


def _ratio_cell(r: Ratio | None, behind: Sequence[str] = ()) -> str:
    if r is None:
        return "-"
    goal = f"target {'≥' if r.better == 'higher' else '≤'} {r.target:g}; " if r.target else ""
    if behind:
        return (
            f"{r.ratio:.2f} [{r.low:.2f}-{r.high:.2f}] not judged "
            f"({goal}{' and '.join(behind)} fell behind the rate)"
        )
    if r.partial:  # the sides' figures cover different rounds
        return f"{r.ratio:.2f} [{r.low:.2f}-{r.high:.2f}] not judged ({goal}{r.partial})"
    mark = ""
    if r.verdict == "meets" or (r.verdict is None and r.meets is True):
        mark = " ✅"
    elif r.verdict == "misses" or (r.verdict is None and r.meets is False):
        mark = " ❌"
    elif r.verdict == "inconclusive":
        mark = " ≈✅" if r.meets else " ≈❌"
    target = ""
    if r.target is not None:
        target = f" (target {'≥' if r.better == 'higher' else '≤'} {r.target:g})"
    return f"{r.ratio:.2f} [{r.low:.2f}-{r.high:.2f}]{mark}{target}"


def _ratio_section(results: Results) -> str:
    backends = [b for b in _backends(results) if b != "memory"]
    cols = [
        ("confirmed_publish", "msg_s", {}),
        ("batched_publish", "msg_s", {}),
        ("consume_ack", "msg_s", {}),
        ("latency", "p99_ms", {"rate": 2000}),
        ("job_roundtrip", "jobs_s", {}),
        ("fanout", "deliveries_s", {}),
    ]
    header = ["backend"] + [
        _WORKLOAD_TITLE[w] + (" p99 @2,000/s" if w == "latency" else "") for w, _, _ in cols
    ]
    rows = []
    for backend in backends:
        row = [_label(backend)]
        for workload, metric, params in cols:
            found = [
                r
                for r in results.ratios
                if r.backend == backend
                and r.workload == workload
                and r.metric == metric
                and all(r.params.get(k) == v for k, v in params.items())
            ]
            ratio = found[0] if found else None
            row.append(_ratio_cell(ratio, _behind(results, ratio) if ratio else ()))
        rows.append(row)
    missing = []
    for backend in backends:
        sides = {t.side: t for t in results.targets if t.backend == backend}
        for side in ("bus", "raw"):
            t = sides.get(side)
            if t is None:
                missing.append(f"{_label(backend)} {side}: not run")
            elif t.status != "ok":
                missing.append(f"{_label(backend)} {side}: {t.reason.splitlines()[0][:200]}")
    text = [
        "Each cell: median ratio [pessimistic-optimistic bound from the run min-max]. "
        "Throughput ratios are library/raw (higher is better); the latency ratio is "
        "library p99 / raw p99 (lower is better). ✅ / ❌: the ratio's range from the "
        "interquartile ranges of both sides is entirely on the good / bad side of the "
        "target; ≈✅ / ≈❌: that range straddles the target and only the median meets / "
        "misses it, so the run-to-run noise decides.",
        "",
        _table(header, rows) if rows else "_No broker was measured on both sides._",
    ]
    # a latency ratio whose run fell behind its rate on either side is no verdict
    judged = [
        r
        for r in results.ratios
        if r.meets is not None and not r.partial and not _behind(results, r)
    ]
    if judged:

        def names(rs: Iterable[Ratio]) -> str:
            return ", ".join(f"{_label(r.backend)} {_WORKLOAD_TITLE[r.workload]}" for r in rs)

        met = [r for r in judged if r.meets]
        clear_miss = [r for r in judged if not r.meets and r.verdict != "inconclusive"]
        close_miss = [r for r in judged if not r.meets and r.verdict == "inconclusive"]
        line = f"Targets met (median ratio): {len(met)} of {len(judged)}."
        if clear_miss:
            line += f" Missed: {names(clear_miss)}."
        if close_miss:
            line += f" Missed within the noise: {names(close_miss)}."
        text += ["", line]
    if note := _behind_note(results):
        text += ["", note]
    if missing:
        text += ["", "Not measured:", ""] + [f"- {m}" for m in missing]
    others = [
        r
        for r in results.ratios
        if r.workload in ("scaling", "sizes", "latency") and r.target is None
    ]
    if others:
        text += [
            "",
            "Other ratios (library/raw; latency rows are p99 bus/raw):",
            "",
            _table(
                ["backend", "workload", "parameters", "metric", "bus", "raw", "ratio [bounds]"],
                [
                    [
                        _label(r.backend),
                        _WORKLOAD_TITLE.get(r.workload, r.workload),
                        ", ".join(
                            f"{k}={v}"
                            for k, v in r.params.items()
                            if k in ("consumers", "size", "rate")
                        ),
                        r.metric,
                        _fmt(r.bus),
                        _fmt(r.raw),
                        _ratio_cell(r),
                    ]
                    for r in others
                ],
            ),
        ]
    return "\n".join(text)


def _capability_section(results: Results, conformance: dict[str, dict[str, Any] | None]) -> str:
    backends = _backends(results)
    header = ["feature"] + [_label(b) for b in backends]
    rows = []
    for feature in FEATURES:
        row = [f"`{feature}`"]
        for backend in backends:
            data = conformance.get(backend)
            if data is None:
                row.append("?")
                continue
            cap = data.get("capabilities", {}).get(feature)
            mark = "\\*" if data.get("declared") else ""
            row.append(cap.get("support", "?") + mark if cap else "?")
        rows.append(row)
    summary = ["conformance (pass/fail/skip)"]
    for backend in backends:
        data = conformance.get(backend)
        if data is None:
            summary.append("no results")
        elif data.get("declared"):
            summary.append("not run")
        else:
            s = data.get("summary", {})
            summary.append(f"{s.get('pass', 0)}/{s.get('fail', 0)}/{s.get('skip', 0)}")
    rows.append(summary)
    missing = [b for b in backends if conformance.get(b) is None]
    declared = [b for b in backends if (conformance.get(b) or {}).get("declared")]
    text = [_table(header, rows)]
    run_it = "run `bus conformance URL`, which writes `bus-results/conformance-<scheme>.json`"
    if declared:
        text += [
            "",
            "\\* Declared, not proven: no conformance results for "
            + ", ".join(_label(b) for b in declared)
            + f", so the column shows what the backend declares (`bus capabilities`), which "
            f"the decision table also uses to exclude a broker; {run_it} to verify it.",
        ]
    if missing:
        text += [
            "",
            "No conformance results or declaration for: "
            + ", ".join(_label(b) for b in missing)
            + f" ({run_it}; `?` = unknown).",
        ]
    failing = []
    for backend in backends:
        data = conformance.get(backend)
        if data:
            failing += [
                f"{_label(backend)}: `{s['name']}` - {s.get('reason', '')[:160]}"
                for s in data.get("scenarios", [])
                if s.get("status") == "fail"
            ]
    if failing:
        text += ["", "Failing conformance scenarios:", ""] + [f"- {f}" for f in failing]
    return "\n".join(text)


def _behind_note(results: Results) -> str:
    """One paragraph naming the latency runs that fell behind their rate ("" if none)."""
    behind = [p for p in results.points if p.error is None and p.fell_behind()]
    if not behind:
        return ""
    named = "; ".join(
        f"{_label(p.backend)} {p.side} at {p.params['rate']:,}/s sent a median "
        f"{p.metrics['sent_rate'].median:,.0f}/s"
        for p in behind
    )
    return (
        f"**Fell behind the rate** (the publisher sent under {100 * KEPT_UP:.0f}% of it, "
        f"its broker confirming slower than asked): {named}. Messages queued, so these "
        "latencies are those of a queue that grew during the run: they grow with the "
        "run's length and move from run to run, and say that the backend could not carry "
        "the rate here, not how fast it is at it."
    )


def _workload_table(
    results: Results,
    workload: str,
    metrics: Sequence[tuple[str, str]],
    params: Sequence[str] = (),
) -> str:
    rows = []
    for backend in _backends(results):
        for side in ("bus", "raw"):
            for p in results.find(backend, side, workload):
                if p.error:
                    rows.append(
                        [_label(backend), side]
                        + ["" for _ in params]
                        + [f"error: {p.error[:100]}"]
                        + ["" for _ in metrics[1:]]
                    )
                    continue
                rows.append(
                    [_label(backend), side]
                    + [str(p.params.get(k, "")) for k in params]
                    + [_cell(p.metric(m)) for m, _ in metrics]
                )
    if not rows:
        return "_not measured_"
    return _table(["backend", "side", *params, *[label for _, label in metrics]], rows)


def _messages(p: PointResult) -> float | None:
    """Messages the broker handled in one timed run of ``p`` (for CPU per message)."""
    params = p.params
    count = params.get("count")
    if p.workload == "latency":
        return float(params.get("rate", 0) * params.get("duration_s", 0)) or None
    if p.workload == "fanout" and count:
        return float(count * params.get("groups", 1))
    if p.workload == "rpc" and count:
        return float(2 * count)
    if p.workload == "sizes" and count:
        return float(count)  # the drain (the publish is metered in the same run)
    return float(count) if count else None


def _cost_section(results: Results) -> str:
    rows = []
    keys: list[tuple[str, str, str]] = []
    by_key: dict[tuple[str, str, str], dict[str, PointResult]] = {}
    for p in results.points:
        if p.broker_cpu_s is None or p.backend == "memory" or p.error:
            continue
        params = ", ".join(
            f"{k}={v}" for k, v in p.params.items() if k in ("rate", "consumers", "size", "groups")
        )
        key = (p.backend, p.workload, params)
        if key not in by_key:
            keys.append(key)
        by_key.setdefault(key, {})[p.side] = p

    def cpu(p: PointResult | None) -> str:
        if p is None or p.broker_cpu_s is None:
            return "-"
        n = _messages(p)
        per_k = f" = {1000 * 1000 * p.broker_cpu_s.median / n:.2f} ms/1k msg" if n else ""
        c = p.broker_cpu_s
        return f"{_fmt(c.median)} s ({_fmt(c.min)}-{_fmt(c.max)}){per_k}"

    def rss(p: PointResult | None) -> str:
        if p is None or p.broker_peak_rss_mb is None:
            return "-"
        return f"{_fmt(p.broker_peak_rss_mb.max)} MiB"

    for backend, workload, params in keys:
        pair = by_key[(backend, workload, params)]
        rows.append(
            [
                _label(backend),
                _WORKLOAD_TITLE.get(workload, workload),
                params,
                cpu(pair.get("bus")),
                cpu(pair.get("raw")),
                rss(pair.get("bus")),
                rss(pair.get("raw")),
            ]
        )
    if not rows:
        return "_No broker ran on this machine where its process could be inspected._"
    return (
        "Broker process CPU (user+system, children included) over each timed run (median, "
        "min-max), "
        "also per 1,000 messages handled, and the broker's peak resident memory over the "
        "runs (sampled every 100 ms). A shared broker also serves other clients meanwhile, "
        "and its memory carries what earlier workloads left; CPU ticks are 10 ms, so small "
        "values are coarse.\n\n"
        + _table(
            [
                "backend",
                "workload",
                "parameters",
                "broker CPU, library",
                "broker CPU, raw",
                "peak RSS, library",
                "peak RSS, raw",
            ],
            rows,
        )
    )


def _noise(results: Results) -> tuple[str, str]:
    """(one-line summary, per-target table) of other processes' CPU use and of the
    hypervisor's steal time."""
    import statistics

    other: dict[str, list[float]] = {}
    steal: dict[str, list[float]] = {}
    for p in results.points:
        if p.other_load_pct is not None:
            other.setdefault(p.target, []).extend(p.other_load_pct.runs)
        if p.steal_pct is not None:
            steal.setdefault(p.target, []).extend(p.steal_pct.runs)
    values = [v for vs in other.values() for v in vs]
    if not values:
        return "", ""
    line = (
        f"Other processes used a median {statistics.median(values):.0f}% "
        f"(max {max(values):.0f}%) of the machine's CPU during the timed runs"
    )
    stolen = [v for vs in steal.values() for v in vs]
    if stolen:  # results of a version before steal_pct have none
        line += (
            f"; the hypervisor withheld a median {statistics.median(stolen):.0f}% "
            f"(max {max(stolen):.0f}%) of it (steal time)"
        )
    line += "."

    def spread(vs: list[float]) -> list[str]:
        if not vs:
            return ["-", "-", "-"]
        return [f"{statistics.median(vs):.0f}%", f"{min(vs):.0f}%", f"{max(vs):.0f}%"]

    rows = [[target, *spread(vs), *spread(steal.get(target, []))] for target, vs in other.items()]
    table = (
        "CPU used by processes other than the benchmark and the measured broker, as a share "
        "of all cores, over each timed run (other engineers' tests, other brokers), and "
        "the steal time over the same runs: CPU the hypervisor gave to other guests while "
        "this machine had work, which no process here shows. High values mark figures "
        "taken under contention.\n\n"
        + _table(["target", "other median", "min", "max", "steal median", "min", "max"], rows)
    )
    return line, table


def _probe_line(results: Results) -> str:
    """The machine's speed over the run, from its CPU probe readings."""
    import statistics

    speeds = [p.items_s for p in results.probes]
    if not speeds:
        return ""
    return (
        "The machine's CPU probe (a fixed pure-Python loop before each backend's pass of "
        f"a round) ran at {statistics.median(speeds) / 1e6:.2f} M items/s "
        f"({min(speeds) / 1e6:.2f}-{max(speeds) / 1e6:.2f})."
    )


def _poll_idle_line(results: Results) -> str:
    """Whether idle CPUs polled instead of halting during the run (benchmarks.pollidle)."""
    status = str(results.environment.get("poll_idle") or "")
    if status.startswith("on"):
        return (
            "Idle CPUs polled instead of halting (`poll_idle`: PM QoS, see the caveats): "
            "the figures are those of a host that does not halt."
        )
    if status.startswith("unavailable"):
        return (
            "Idle CPUs could not be kept polling "
            f"({status.removeprefix('unavailable: ')}): round trips include wake-ups."
        )
    if status == "off":
        return "Idle CPUs were left to halt (`poll_idle` off)."
    return ""  # results of a version before poll_idle


def _heap_line(cfg: dict[str, Any]) -> list[str]:
    """Whether each run began on a collected, frozen heap (``freeze_heap``)."""
    if "freeze_heap" not in cfg:
        return []  # results of a version before freeze_heap
    if cfg["freeze_heap"]:
        return [
            "- heap: before each run the harness collected garbage and froze what was "
            "alive (`gc.freeze`, `freeze_heap`), so a run's collections traverse what it "
            "allocates, not the whole process."
        ]
    return [
        "- heap: not frozen (`freeze_heap` off): a run's full collections traverse the "
        "whole process."
    ]


def _run_length_line(cfg: dict[str, Any]) -> str:
    """How the counted workloads' run lengths were sized (``min_run_s``, ``max_run_s``)."""
    shortest, longest, scale = cfg.get("min_run_s"), cfg.get("max_run_s"), cfg.get("max_run_scale")
    rules = []
    if shortest:
        within = f", and no more than keep the run within {longest} s" if longest else ""
        rules.append(
            f"where its timed stretch lasted less than {shortest} s, proportionally more "
            f"messages (at most {scale}x the profile's count{within})"
        )
    if longest:
        rules.append(
            f"where the whole run, its backlog included, took more than {longest} s, "
            f"proportionally fewer (at least 1/{scale} of the count)"
        )
    if not rules:
        return "- run length: the profile's counts as given (`min_run_s` = `max_run_s` = 0)."
    return (
        "- run length: the first warm-up run of each counted figure on a backend sizes "
        "every later run of it (both sides): "
        + "; ".join(rules)
        + ". The `count` of each figure in `results.json` is the one measured."
    )


def _environment_section(results: Results) -> str:
    env = results.environment
    lines = [
        f"- Python {env.get('python')} ({env.get('implementation')}), {env.get('platform')}",
        f"- CPU: {env.get('cpu_count')} x {env.get('cpu_model')}; "
        f"memory {env.get('memory_gib')} GiB",
        f"- load average at start {env.get('load_average_start')}, at end "
        f"{env.get('load_average_end')}",
        f"- idle CPUs polling (`poll_idle`): {env.get('poll_idle', 'not recorded')}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v),
    ]
    packages = env.get("packages") or {}
    if packages.get("redis") and not packages.get("hiredis"):
        lines.append(
            "- hiredis is not installed: redis-py parses replies in pure Python on both sides "
            "(it weighs on every Redis figure, more so where an entry carries many fields)"
        )
    seen = set()
    for t in results.targets:
        if t.backend in seen:
            continue
        seen.add(t.backend)
        b = t.broker
        impl = b.get("implementation", "?")
        version = b.get("version", "")
        where = "this machine" if b.get("local") else "elsewhere / unknown"
        lines.append(
            f"- {_label(t.backend)}: {impl} {version} at `{t.url}` "
            f"(found: {t.origin}; runs on {where})"
        )
    return "\n".join(lines)


def _settings_section(results: Results) -> str:
    cfg = results.config
    lines = [
        f"- profile `{results.profile}`: {cfg.get('warmup_runs')} warm-up + {cfg.get('runs')} "
        "measured runs per figure (latency: "
        f"{(cfg.get('latency') or {}).get('runs') or cfg.get('runs')} runs per rate after a "
        "warm-up at that rate); figures are medians with (min-max) of the runs. Library "
        "and raw client run back to back for each workload."
        + (
            f" The measured runs are split over {cfg.get('rounds')} rounds (passes through "
            "every backend's workloads, each with its warm-up, minutes apart), so a "
            "figure's spread also holds the machine's drift over the run."
            if (cfg.get("rounds") or 1) > 1
            else ""
        ),
        _run_length_line(cfg),
        *_heap_line(cfg),
        f"- message size {cfg.get('message_size')} B unless stated; prefetch {cfg.get('prefetch')} "
        "on both sides (library `prefetch`, Redis XREADGROUP COUNT, RabbitMQ basic.qos, "
        "NATS fetch batch, Kafka max_records).",
        "- sizes of the workloads: "
        + "; ".join(
            f"{name} {json.dumps(cfg.get(name), separators=(',', ':'))}"
            for name in WORKLOADS
            if name in cfg.get("workloads", [])
        ),
        f"- Kafka (both sides): {cfg.get('kafka')}",
        f"- RabbitMQ raw queue type: {cfg.get('rabbitmq', {}).get('queue_type')}; "
        f"NATS raw storage: {cfg.get('nats', {}).get('storage')}",
        f"- library options per backend: {cfg.get('library_options') or '{}'}",
    ]
    for t in results.targets:
        if t.settings:
            lines.append(f"- `{t.id}` settings: {json.dumps(t.settings, default=str)[:600]}")
    return "\n".join(lines)


CAVEATS = """\
- **Shared, small machine.** Client and brokers run on one 2-core machine over loopback,
  and other engineers' test suites ran on it at the same time. Absolute figures are
  noisy and low compared with a dedicated host; compare within one run (library vs raw
  ran back to back per workload), and read a difference inside the spreads as a tie.
- Single-node brokers: no replication cost (RabbitMQ quorum queues on one node, NATS R1
  file streams, Redis with its own persistence settings).
- The client is one Python process: competing-consumer "scaling" shows how the broker
  shares a group among members of one process, not multi-process client scaling.
- Latency is publish-to-handler against the intended send time (coordinated-omission
  aware); the sender's timer granularity (~1 ms) is part of every figure on both sides.
- Broker CPU and memory include whatever else the broker served during a workload.
- Raw baselines use the idioms the issue names (one XACK per read batch on Redis, one
  commit per fetched batch on Kafka, `basic_ack` per message with a large prefetch on
  RabbitMQ, pull fetch of `prefetch` with per-message acks on NATS). A ratio above 1
  means the library beat that idiom (e.g. RabbitMQ acks coalesced with `multiple=True`),
  not that the client cannot go faster. A pull fetch of hundreds waits for its batch or
  its expiry, which shows as job latency on the raw NATS side.
"""


POLL_IDLE_CAVEAT = """\
- **Idle CPUs polled.** The run held Linux's PM QoS CPU latency request at 0 us
  (`/dev/cpu_dma_latency`, `poll_idle`, on by default), so an idle CPU spins in the
  kernel's idle loop instead of halting, and a wake-up (a broker's reply, the sender's
  timer) starts at once. On the 2-core VM this was built on, halted CPUs made the
  figures of two runs of the same code move a median 12-13 % (polling: 5 %), and
  one-at-a-time round trips ran up to 1.8x faster polling; the figures are those of a
  busy or latency-tuned host, on both sides of every ratio alike.
  `--set poll_idle=false` measures an idling host.
"""


TANSU_CAVEAT = """\
- **Kafka here is Tansu** (a Kafka-protocol broker) with memory storage and no idempotent
  producer, not Apache Kafka: its figures say little about a real Kafka cluster's
  throughput, durability cost or group rebalance times (Tansu holds every join for half
  the session timeout: 1-2 s with the 2 s used here; a Kafka group therefore joins once
  per workload: its backlogs are all published first and drained in one pass, each run
  being one stretch of that drain). Tansu answers a fetch only when its wait
  (`fetch_max_wait_ms`) expires, so Kafka latency here follows that setting.
"""


def render_markdown(
    results: Results,
    conformance: dict[str, dict[str, Any] | None],
    charts: dict[str, list[str]],
    comparison: str | None = None,
) -> str:
    env = results.environment
    noise_line, noise_table = _noise(results)
    out = [
        "# Broker decision report",
        "",
        f"Profile `{results.profile}`, started {results.started}, took {results.duration_s:.0f} s "
        f"on {env.get('cpu_count')} CPUs ({env.get('cpu_model')}). "
        "Every figure: median of the measured runs, with (min-max). "
        + "".join(
            f"{line} "
            for line in (noise_line, _probe_line(results), _poll_idle_line(results))
            if line
        )
        + "Generated by `bus bench` from `results.json`.",
        "",
        "## Which broker for which workload",
        "",
        "Measured through the library (`bus`), on the brokers measured in this run "
        "(memory:// is in-process and not a broker choice); a workload needing a capability "
        "the conformance results show as unsupported excludes that broker.",
        "",
        _table(
            ["workload profile", "decided by", "winner", "figure", "runner-up", "margin"],
            decision_rows(results, conformance),
        ),
        "",
        "## Library overhead against each raw client",
        "",
        _ratio_section(results),
    ]
    for name in charts.get("ratios", []):
        out += ["", f"![library / raw ratios]({name})"]
    out += [
        "",
        "## Capability matrix (from the conformance results)",
        "",
        _capability_section(results, conformance),
        "",
        "## Throughput",
        "",
    ]
    for name in charts.get("throughput", []):
        out += [f"![throughput]({name})", ""]
    for workload, metrics in (
        ("confirmed_publish", [("msg_s", "msg/s")]),
        ("batched_publish", [("msg_s", "msg/s")]),
        ("consume_ack", [("msg_s", "msg/s")]),
        ("fanout", [("deliveries_s", "deliveries/s"), ("msg_s", "published msg/s")]),
        (
            "job_roundtrip",
            [("jobs_s", "jobs/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")],
        ),
    ):
        params = ("groups",) if workload == "fanout" else ()
        out += [
            f"### {_WORKLOAD_TITLE[workload]}",
            "",
            _workload_table(results, workload, metrics, params),
            "",
        ]
    out += ["## End-to-end latency", ""]
    out += [
        _workload_table(
            results,
            "latency",
            [
                ("p50_ms", "p50 ms"),
                ("p90_ms", "p90 ms"),
                ("p99_ms", "p99 ms"),
                ("p99.9_ms", "p99.9 ms"),
                ("max_ms", "max ms"),
                ("sent_rate", "sent/s"),
                ("lost", "missing"),
            ],
            ("rate",),
        ),
        "",
    ]
    if note := _behind_note(results):
        out += [note, ""]
    ramp = [p for p in results.points if p.workload == "latency_ramp" and p.error is None]
    if ramp:
        out += [
            "Maximum sustainable rate (ramp, one pass):",
            "",
            _workload_table(results, "latency_ramp", [("max_rate", "max msg/s")]),
            "",
        ]
    for name in charts.get("latency", []):
        out += [f"![latency]({name})", ""]
    out += [
        "## Competing consumers",
        "",
        _workload_table(results, "scaling", [("msg_s", "msg/s")], ("consumers",)),
        "",
    ]
    for name in charts.get("scaling", []):
        out += [f"![scaling]({name})", ""]
    out += [
        "## Message sizes",
        "",
        _workload_table(
            results,
            "sizes",
            [
                ("publish_msg_s", "publish msg/s"),
                ("publish_mb_s", "publish MiB/s"),
                ("consume_msg_s", "consume msg/s"),
                ("consume_mb_s", "consume MiB/s"),
            ],
            ("size",),
        ),
        "",
    ]
    for name in charts.get("sizes", []):
        out += [f"![sizes]({name})", ""]
    out += [
        "## Request/reply (library only)",
        "",
        _workload_table(
            results, "rpc", [("req_s", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")]
        ),
        "",
        "## Broker cost",
        "",
        _cost_section(results),
        "",
        "## Machine noise",
        "",
        noise_table or "_not measured_",
        "",
        "## Caveats",
        "",
        CAVEATS
        + (POLL_IDLE_CAVEAT if str(env.get("poll_idle", "")).startswith("on") else "")
        + (TANSU_CAVEAT if _LABEL["kafka"] == "Kafka (Tansu)" else ""),
        *(
            ["## Warnings of this run", "", *(f"- {w}" for w in results.warnings), ""]
            if results.warnings
            else []
        ),
        "## Method and settings",
        "",
        _settings_section(results),
        "",
        "## Environment",
        "",
        _environment_section(results),
        "",
    ]
    if comparison:
        out += ["## Reproducibility against a previous run", "", comparison, ""]
    errors = [p for p in results.points if p.error]
    if errors:
        out += (
            ["## Errors", ""]
            + [f"- `{p.target}` {p.workload}: {(p.error or '')[:300]}" for p in errors]
            + [""]
        )
    return "\n".join(out)


def write_report(
    results: Results,
    out_dir: Path,
    conformance_dir: Path | None = None,
    previous: Path | None = None,
) -> Path:
    """Write ``report.md`` and its PNG charts into ``out_dir``; return the report path.
    ``previous``: an earlier ``results.json`` to check reproducibility against."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # say which Kafka-protocol broker it was (set for every report: a process writing
    # reports of several runs must not carry one run's label into the next)
    tansu = any(
        t.backend == "kafka" and "tansu" in str(t.broker.get("implementation", "")).lower()
        for t in results.targets
    )
    _LABEL["kafka"] = "Kafka (Tansu)" if tansu else "Kafka"
    conformance = load_conformance(conformance_dir or Path("bus-results"), _backends(results))
    for backend, data in conformance.items():
        if data is None:
            conformance[backend] = declared_conformance(backend)
    charts: dict[str, list[str]] = {}

    def add(key: str, name: str | None) -> None:
        if name:
            charts.setdefault(key, []).append(name)

    add("throughput", _chart_throughput(results, out_dir))
    add("ratios", _chart_ratios(results, out_dir))
    for name in _chart_latency(results, out_dir):
        add("latency", name)
    add(
        "scaling",
        _chart_lines(
            results,
            out_dir,
            workload="scaling",
            param="consumers",
            metrics=[("msg_s", "msg/s drained")],
            title="Competing consumers: backlog drain rate by group size (solid = library)",
            name="scaling.png",
        ),
    )
    add(
        "sizes",
        _chart_lines(
            results,
            out_dir,
            workload="sizes",
            param="size",
            metrics=[("publish_mb_s", "publish MiB/s"), ("consume_mb_s", "consume MiB/s")],
            title="Message sizes: batched publish and drain, MiB/s (solid = library)",
            name="sizes.png",
            logx=True,
        ),
    )
    comparison = None
    if previous is not None:
        from benchmarks.compare import compare

        before = Results.read(previous)
        rows = zip(
            decision_rows(before, conformance), decision_rows(results, conformance), strict=True
        )
        decisions = [
            (old[0], _verdict(old), _verdict(new)) for old, new in rows if old[0] == new[0]
        ]
        comparison = compare(before, results, str(previous), decisions).markdown()
    path = out_dir / "report.md"
    path.write_text(render_markdown(results, conformance, charts, comparison))
    return path
