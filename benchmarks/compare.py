"""Reproducibility: compare two results files figure by figure.

A figure reproduces when this run's median lies inside the previous run's min-max
range: the spread the first report gave holds the second run's figure. (Until
2026-12-01 a figure also counted when the previous median lay inside this run's range,
a laxer test: 98 % of figures pass it at random with 6 runs a figure, 91 % pass this
one.) The report of the newer run gets a section listing the share that reproduced
and the figures that moved most, and the common shift: the median speed change of all
figures between the runs (a shared machine's speed moves them together) and the share
that reproduces once it is taken out, which tells the machine's drift from each
figure's own noise.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.results import Results

__all__ = ["Comparison", "chance_share", "compare"]


def chance_share(runs: int, trials: int = 20_000) -> float:
    """The share of figures that reproduce under this module's criterion when two runs
    of ``runs`` measurements each differ only at random (same distribution,
    independent draws): the ceiling a perfectly steady machine would reach. The
    criterion only compares values, so any continuous distribution gives the same.
    Seeded: the same answer every time."""
    rng = random.Random(runs)
    hits = 0
    for _ in range(trials):
        a = [rng.random() for _ in range(runs)]
        b = [rng.random() for _ in range(runs)]
        hits += min(a) <= statistics.median(b) <= max(a)
    return hits / trials


@dataclass
class Delta:
    target: str
    workload: str
    params: str
    metric: str
    before: float
    after: float
    within: bool
    behind: bool = False
    """A latency figure whose run fell behind its rate in either run (see
    :meth:`benchmarks.results.PointResult.fell_behind`)."""
    low: float = 0.0
    high: float = 0.0
    """The previous run's min-max of this figure."""

    @property
    def lower_is_better(self) -> bool:
        return self.metric.endswith("_ms")

    @property
    def speed(self) -> float:
        """How much faster this run measured the figure (after / before for a rate,
        before / after for a latency; 1.0 unchanged, 0.0 where either is 0)."""
        if self.before <= 0 or self.after <= 0:
            return 0.0
        return self.before / self.after if self.lower_is_better else self.after / self.before

    def within_shifted(self, speed: float) -> bool:
        """Whether this run's median, with a common speed change ``speed`` taken out,
        lies inside the previous run's min-max."""
        after = self.after * speed if self.lower_is_better else self.after / speed
        return self.low <= after <= self.high

    @property
    def change(self) -> float:
        return (self.after - self.before) / self.before if self.before else 0.0


@dataclass
class Comparison:
    previous: str
    deltas: list[Delta]
    decisions: list[tuple[str, str, str]] = field(default_factory=list)
    """(workload profile, previous winner, this run's winner) of the decision table."""
    runs: int = 0
    """Measured runs per figure (the median over figures) in this run."""
    probe_change: float | None = None
    """How much faster (+) or slower (-) the machine's CPU probe ran in this run than
    in the previous one (medians; None when either run has no probe)."""
    ratios: tuple[int, int] = (0, 0)
    """(reproduced, compared) library/raw ratios: this run's ratio inside the previous
    run's bounds (the pessimistic-optimistic range from its min-max)."""
    spread_width: float | None = None
    """This run's headline figures: the median of (max - min) / median."""

    @property
    def reproduced(self) -> int:
        return sum(d.within for d in self.deltas)

    @property
    def shift(self) -> float | None:
        """The machine's common speed change between the runs: the median over the
        figures of how much faster this run measured each (geometric: 1.05 is 5 %
        faster; None without figures). A shared machine's speed moves every figure
        at once (the CPU probe does not always see it: memory:// figures moved with
        the brokers' while the probe stood still)."""
        speeds = [d.speed for d in self.deltas if d.speed > 0]
        if not speeds:
            return None
        return math.exp(statistics.median(math.log(x) for x in speeds))

    @property
    def reproduced_shifted(self) -> int:
        """Figures inside the previous run's min-max once :attr:`shift` is taken out
        of this run's: what each figure's own noise, not the machine's overall speed,
        leaves outside."""
        shift = self.shift
        if shift is None:
            return 0
        return sum(d.within_shifted(shift) for d in self.deltas)

    def markdown(self, worst: int = 15) -> str:
        n = len(self.deltas)
        if not n:
            return f"No figure in common with the previous run ({self.previous})."
        share = 100.0 * self.reproduced / n
        lines = [
            f"Compared with `{self.previous}`: {self.reproduced} of {n} figures ({share:.0f}%) "
            "reproduced (this run's median inside the previous run's min-max).",
        ]
        moves = sorted(abs(d.change) for d in self.deltas)
        line = (
            f"Between the runs a figure moved a median {100 * statistics.median(moves):.1f}% "
            f"(90th percentile {100 * moves[math.ceil(0.9 * len(moves)) - 1]:.0f}%)"
        )
        if self.spread_width is not None:
            line += (
                f"; this run's min-max spreads are a median {100 * self.spread_width:.0f}% "
                "of their figure wide"
            )
        lines.append(line + ".")
        shift = self.shift
        if shift is not None:
            same_way = sum(
                (d.speed > 1) == (shift > 1) for d in self.deltas if d.speed > 0 and d.speed != 1
            )
            shifted = self.reproduced_shifted
            lines.append(
                f"Together the figures ran a median {100 * abs(shift - 1):.1f}% "
                f"{'faster' if shift > 1 else 'slower'} than in the previous run ({same_way} of "
                f"{n} moved that way); with that common shift taken out, {shifted} of {n} "
                f"({100 * shifted / n:.0f}%) lie inside the previous run's min-max (the "
                "shift is what moved every figure at once: the machine's speed, or a change "
                "of code between the runs; the rest is each figure's own)."
            )
        reproduced, compared = self.ratios
        if compared:
            lines.append(
                f"Library/raw ratios, the figures the targets judge: {reproduced} of {compared} "
                f"({100 * reproduced / compared:.0f}%) reproduced (this run's ratio inside the "
                "previous run's bounds)."
            )
        missed = [d for d in self.deltas if not d.within]
        if missed:
            small = sum(abs(d.change) < 0.10 for d in missed)
            line = (
                f"Of the {len(missed)} that did not, {small} moved less than 10% (steady "
                "figures with a narrow min-max miss it by a small drift)"
            )
            if behind := sum(d.behind for d in missed):
                line += (
                    f"; {behind} are latencies of a backend that fell behind the rate in "
                    "either run (a queue that grew during the run)"
                )
            lines.append(line + ".")
        if self.probe_change is not None:
            lines.append(
                f"The machine itself: its CPU probe ran {100 * self.probe_change:+.0f}% "
                "against the previous run (the same fixed pure-Python loop; a shared "
                "machine's speed moves every figure, on both sides alike)."
            )
        if self.runs > 1:
            lines.append(
                f"With {self.runs} measured runs per figure, two runs whose figures differ "
                f"only at random reproduce about {100 * chance_share(self.runs):.0f}% of "
                "them under this criterion: that is the ceiling, not 100%."
            )
        if self.decisions:
            same = sum(old == new for _, old, new in self.decisions)
            consistent = sum(_consistent(old, new) for _, old, new in self.decisions)
            lines += [
                "",
                f"Answers of the decision table: {same} of {len(self.decisions)} the same, "
                f"{consistent} consistent (the same, or a tie in one run that includes the "
                "other run's winner).",
                "",
                "| workload profile | previous winner | this run's winner |",
                "|---|---|---|",
                *(f"| {p} | {old} | {new} |" for p, old, new in self.decisions),
            ]
        lines += [
            "",
            "Figures that moved most:",
            "",
            "| target | workload | parameters | metric | previous | this run | change | within |",
            "|---|---|---|---|---|---|---|---|",
        ]
        moved = sorted(self.deltas, key=lambda d: -abs(d.change))[:worst]
        for d in moved:
            lines.append(
                f"| {d.target} | {d.workload} | {d.params} | {d.metric} | {d.before:,.2f} | "
                f"{d.after:,.2f} | {100 * d.change:+.0f}% | {'yes' if d.within else 'no'} |"
            )
        return "\n".join(lines)


_HEADLINE = {
    "msg_s",
    "deliveries_s",
    "jobs_s",
    "req_s",
    "p50_ms",
    "p99_ms",
    "consume_msg_s",
    "publish_msg_s",
}


def _brokers(verdict: str) -> set[str]:
    """``"A = B (tie)"`` -> {A, B}; ``"A"`` -> {A}."""
    return {part.strip() for part in verdict.removesuffix(" (tie)").split(" = ")}


def _consistent(old: str, new: str) -> bool:
    if old == new:
        return True
    a, b = _brokers(old), _brokers(new)
    return (len(a) == 1 and a <= b) or (len(b) == 1 and b <= a)


def _figure(params: dict[str, Any]) -> str:
    """What identifies a figure across runs: its parameters without the message
    count, which run-length sizing sets per run and machine (``BenchConfig.min_run_s``,
    ``max_run_s``): a rate is comparable across counts, the count is not the figure."""
    return repr(sorted((k, v) for k, v in params.items() if k != "count"))


def compare(
    previous: Results,
    current: Results,
    previous_name: str = "previous",
    decisions: Sequence[tuple[str, str, str]] = (),
) -> Comparison:
    """Headline figures present in both results, and whether each reproduced;
    ``decisions`` (workload profile, previous winner, current winner) are carried
    into the comparison as given."""
    index = {
        (p.target, p.workload, _figure(p.params)): p for p in previous.points if p.error is None
    }
    deltas = []
    for p in current.points:
        if p.error is not None:
            continue
        old = index.get((p.target, p.workload, _figure(p.params)))
        if old is None:
            continue
        for metric, s in p.metrics.items():
            if metric not in _HEADLINE or metric not in old.metrics:
                continue
            o = old.metrics[metric]
            within = o.min <= s.median <= o.max
            params = ", ".join(
                f"{k}={v}" for k, v in p.params.items() if k in ("rate", "consumers", "size")
            )
            behind = p.fell_behind() or old.fell_behind()
            deltas.append(
                Delta(
                    p.target,
                    p.workload,
                    params,
                    metric,
                    o.median,
                    s.median,
                    within,
                    behind,
                    low=o.min,
                    high=o.max,
                )
            )
    widths = [
        (s.max - s.min) / s.median
        for p in current.points
        if p.error is None
        for metric, s in p.metrics.items()
        if metric in _HEADLINE and s.median
    ]
    old_ratios = {(r.backend, r.workload, _figure(r.params), r.metric): r for r in previous.ratios}
    ratio_hits = compared = 0
    for r in current.ratios:
        prior = old_ratios.get((r.backend, r.workload, _figure(r.params), r.metric))
        if prior is None:
            continue
        compared += 1
        ratio_hits += prior.low <= r.ratio <= prior.high
    counts = [len(s.runs) for p in current.points if p.error is None for s in p.metrics.values()]
    runs = int(statistics.median(counts)) if counts else 0
    probe_change = None
    if previous.probes and current.probes:
        before = statistics.median(p.items_s for p in previous.probes)
        after = statistics.median(p.items_s for p in current.probes)
        probe_change = after / before - 1 if before else None
    return Comparison(
        previous_name,
        deltas,
        list(decisions),
        runs,
        probe_change,
        ratios=(ratio_hits, compared),
        spread_width=statistics.median(widths) if widths else None,
    )
