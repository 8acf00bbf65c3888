"""Reproducibility: compare two results files figure by figure.

A figure reproduces when each run's median lies inside the other run's min-max
range (the spreads overlap around both medians). The report of the newer run gets
a section listing the share that reproduced and the figures that moved most.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.results import Results

__all__ = ["Comparison", "compare"]


@dataclass
class Delta:
    target: str
    workload: str
    params: str
    metric: str
    before: float
    after: float
    within: bool

    @property
    def change(self) -> float:
        return (self.after - self.before) / self.before if self.before else 0.0


@dataclass
class Comparison:
    previous: str
    deltas: list[Delta]

    @property
    def reproduced(self) -> int:
        return sum(d.within for d in self.deltas)

    def markdown(self, worst: int = 15) -> str:
        n = len(self.deltas)
        if not n:
            return f"No figure in common with the previous run ({self.previous})."
        share = 100.0 * self.reproduced / n
        lines = [
            f"Compared with `{self.previous}`: {self.reproduced} of {n} figures ({share:.0f}%) "
            "reproduced (each median inside the other run's min-max).",
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


def compare(previous: Results, current: Results, previous_name: str = "previous") -> Comparison:
    """Headline figures present in both results, and whether each reproduced."""
    index = {
        (p.target, p.workload, repr(sorted(p.params.items()))): p
        for p in previous.points
        if p.error is None
    }
    deltas = []
    for p in current.points:
        if p.error is not None:
            continue
        key = (p.target, p.workload, repr(sorted(p.params.items())))
        old = index.get(key)
        if old is None:
            continue
        for metric, s in p.metrics.items():
            if metric not in _HEADLINE or metric not in old.metrics:
                continue
            o = old.metrics[metric]
            within = o.min <= s.median <= o.max or s.min <= o.median <= s.max
            params = ", ".join(
                f"{k}={v}" for k, v in p.params.items() if k in ("rate", "consumers", "size")
            )
            deltas.append(Delta(p.target, p.workload, params, metric, o.median, s.median, within))
    return Comparison(previous_name, deltas)
