"""The results file (``results.json``): typed, versioned, self-describing.

Everything the report shows is computed from this file, so a report can be
regenerated (``bus bench --report-only results.json``) and two runs compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic

from benchmarks.stats import Summary

__all__ = ["KEPT_UP", "RATIO_TARGETS", "PointResult", "Probe", "Ratio", "Results", "TargetResult"]

SCHEMA = "bus-bench/1"

#: A latency run kept up with its rate when its publisher sent at least this share
#: of it (a paced sender that falls further behind is waiting on the broker).
KEPT_UP = 0.95


class TargetResult(pydantic.BaseModel):
    id: str
    backend: str
    side: Literal["bus", "raw"]
    url: str
    status: Literal["ok", "error", "skipped"] = "ok"
    reason: str = ""
    origin: str = ""
    broker: dict[str, Any] = pydantic.Field(default_factory=dict)
    settings: dict[str, Any] = pydantic.Field(default_factory=dict)
    duration_s: float = 0.0
    """Wall time of the backend's rounds (both sides: they alternate)."""
    workload_s: dict[str, float] = pydantic.Field(default_factory=dict)
    """This side's own wall time per workload, over every round, clean-up included."""


class PointResult(pydantic.BaseModel):
    target: str
    backend: str
    side: Literal["bus", "raw"]
    workload: str
    params: dict[str, Any]
    metrics: dict[str, Summary] = pydantic.Field(default_factory=dict)
    broker_cpu_s: Summary | None = None
    broker_peak_rss_mb: Summary | None = None
    other_load_pct: Summary | None = None
    """CPU used by other processes on the machine during the runs, % of all cores."""
    steal_pct: Summary | None = None
    """Steal time during the runs, % of all cores: CPU the hypervisor withheld from
    this virtual machine (0 on bare metal or where the kernel does not report it)."""
    curve_ms: list[tuple[float, float]] | None = None
    notes: list[str] = pydantic.Field(default_factory=list)
    error: str | None = None

    def metric(self, name: str) -> Summary | None:
        return self.metrics.get(name)

    def fell_behind(self) -> bool:
        """A latency point whose publisher sent a median below ``KEPT_UP`` of its
        rate: the broker confirmed slower than the rate asked, messages queued, and
        the latencies are those of a growing queue (they grow with the run's length),
        not a property of the backend at that rate."""
        sent = self.metrics.get("sent_rate")
        rate = self.params.get("rate")
        if self.workload != "latency" or sent is None or not rate:
            return False
        return bool(sent.median < KEPT_UP * float(rate))


class Ratio(pydantic.BaseModel):
    """Library / raw for one backend, workload and parameter set."""

    backend: str
    workload: str
    params: dict[str, Any]
    metric: str
    bus: float
    raw: float
    ratio: float
    low: float
    """Pessimistic bound from the run spreads (bus min / raw max, or the inverse for latency)."""
    high: float
    iqr_low: float = 0.0
    """Bound from the interquartile ranges (bus q1 / raw q3, or the inverse)."""
    iqr_high: float = 0.0
    target: float | None = None
    better: Literal["higher", "lower"] = "higher"
    meets: bool | None = None
    """Whether the median ratio meets the target."""
    verdict: Literal["meets", "misses", "inconclusive"] | None = None
    """``meets``/``misses`` when the whole IQR-bound range is on one side of the target,
    ``inconclusive`` when it straddles it (the run-to-run noise decides) or the ratio is
    ``partial``."""
    partial: str = ""
    """Why the two sides' figures do not cover the same rounds (the workload failed
    in a round on one side only, so each median holds other minutes of the machine),
    else empty. A partial ratio is never judged ``meets`` or ``misses``."""


#: workload -> (metric, comparison, target, extra params that select the point)
RATIO_TARGETS: dict[str, tuple[str, Literal["higher", "lower"], float, dict[str, Any]]] = {
    "confirmed_publish": ("msg_s", "higher", 0.90, {}),
    "batched_publish": ("msg_s", "higher", 0.80, {}),
    "consume_ack": ("msg_s", "higher", 0.70, {}),
    "latency": ("p99_ms", "lower", 1.5, {"rate": 2000}),
}


class Probe(pydantic.BaseModel):
    """One reading of the machine's speed (:mod:`benchmarks.probe`), taken before a
    backend's pass of a round."""

    backend: str
    round: int
    items_s: float


class Results(pydantic.BaseModel):
    schema_: str = pydantic.Field(default=SCHEMA, alias="schema")
    profile: str
    command: list[str] = pydantic.Field(default_factory=list)
    started: str
    duration_s: float = 0.0
    config: dict[str, Any]
    environment: dict[str, Any]
    targets: list[TargetResult] = pydantic.Field(default_factory=list)
    points: list[PointResult] = pydantic.Field(default_factory=list)
    ratios: list[Ratio] = pydantic.Field(default_factory=list)
    probes: list[Probe] = pydantic.Field(default_factory=list)
    """The machine's speed before each backend's pass of each round."""
    warnings: list[str] = pydantic.Field(default_factory=list)
    """What the run warned about: plans of one broker measured once, clean-ups that
    failed or overran their allowance, library options that differ from the raw side's
    settings, settings decided differently per broker."""

    model_config = pydantic.ConfigDict(populate_by_name=True)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2, by_alias=True) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Results:
        return cls.model_validate_json(path.read_text())

    def find(self, backend: str, side: str, workload: str, **params: Any) -> list[PointResult]:
        return [
            p
            for p in self.points
            if p.backend == backend
            and p.side == side
            and p.workload == workload
            and all(p.params.get(k) == v for k, v in params.items())
        ]
