"""Summaries of repeated runs and latency histograms.

Every figure in the results is the median of several measured runs with its
spread (min, max and the interquartile range), so two runs of the harness can be
compared: a difference inside the spread is noise.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import pydantic

__all__ = ["PERCENTILES", "LatencyHistogram", "Summary", "summarize"]

#: Percentiles reported for every latency figure (p100 is the max).
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 100.0)


class Summary(pydantic.BaseModel):
    """The median of ``runs`` with its spread."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    runs: list[float]

    @property
    def spread_pct(self) -> float:
        """Half the min-max range as a percentage of the median."""
        if not self.median:
            return 0.0
        return 50.0 * (self.max - self.min) / abs(self.median)

    def fmt(self, digits: int = 0, scale: float = 1.0) -> str:
        """``median (min-max)`` for tables."""
        f = f"{{:,.{digits}f}}"
        m, lo, hi = (f.format(v * scale) for v in (self.median, self.min, self.max))
        return f"{m} ({lo}-{hi})" if len(self.runs) > 1 else m


def summarize(values: Iterable[float]) -> Summary:
    runs = [float(v) for v in values]
    if not runs:
        raise ValueError("no runs to summarize")
    ordered = sorted(runs)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Summary(
        median=statistics.median(ordered),
        min=ordered[0],
        max=ordered[-1],
        q1=q1,
        q3=q3,
        runs=[round(v, 3) for v in runs],
    )


class LatencyHistogram:
    """An HDR histogram of latencies in microseconds (1 us to 10 min, 3 significant
    digits), from the ``hdrhistogram`` package."""

    LOWEST_US = 1
    HIGHEST_US = 600_000_000

    def __init__(self) -> None:
        from hdrh.histogram import HdrHistogram

        self._h = HdrHistogram(self.LOWEST_US, self.HIGHEST_US, 3)

    def record_ns(self, values_ns: Sequence[int]) -> None:
        record = self._h.record_value
        top = self.HIGHEST_US
        for ns in values_ns:
            record(min(top, max(1, ns // 1000)))

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentiles_ms(self) -> dict[str, float]:
        """``{"p50": ms, "p90": ..., "p99": ..., "p99.9": ..., "max": ...}``."""
        out: dict[str, float] = {}
        for p in PERCENTILES:
            name = "max" if p == 100.0 else f"p{p:g}"
            us = self._h.get_max_value() if p == 100.0 else self._h.get_value_at_percentile(p)
            out[name] = round(us / 1000.0, 3)
        return out

    def curve_ms(self) -> list[tuple[float, float]]:
        """(percentile, ms) points for a percentile-distribution plot."""
        points = []
        for p in (0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100):
            us = self._h.get_value_at_percentile(p) if p < 100 else self._h.get_max_value()
            points.append((float(p), round(us / 1000.0, 3)))
        return points
