"""Plain-text and Markdown renderings of suite results and capability matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bus.capabilities import Capabilities, Feature, Support
from conformance.runner import SuiteResult

__all__ = ["capability_markdown", "result_table"]

_MARK = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}


def result_table(result: SuiteResult) -> str:
    """A fixed-width table of one suite run, with reasons for fails and skips."""
    width = max(len(r.name) for r in result.scenarios) if result.scenarios else 10
    lines = [
        f"Conformance of {result.url} ({result.backend}), {len(result.scenarios)} scenarios",
        f"{'scenario':<{width}}  result  seconds  notes",
        f"{'-' * width}  ------  -------  -----",
    ]
    for r in result.scenarios:
        note = r.reason or r.detail
        lines.append(f"{r.name:<{width}}  {_MARK[r.status]:<6}  {r.duration_s:7.2f}  {note}")
    c = result.counts
    lines.append(
        f"{c['pass']} passed, {c['fail']} failed, {c['skip']} skipped in {result.duration_s:.1f}s"
    )
    return "\n".join(lines)


_CELL = {Support.NATIVE: "native", Support.EMULATED: "emulated", Support.UNSUPPORTED: "—"}


def capability_markdown(declared: Mapping[str, Capabilities]) -> str:
    """Feature x backend Markdown table, then the notes (how / why) per cell."""
    names: Sequence[str] = list(declared)
    lines = [
        "| feature | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for feature in Feature:
        cells = [_CELL[declared[n][feature].support] for n in names]
        lines.append(f"| {feature.value} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        notes = [
            f"{f.value}: {declared[n][f].support.value}, {declared[n][f].how}"
            for f in Feature
            if declared[n][f].how
        ]
        lines.append(f"- **{n}**: " + "; ".join(notes) + ".")
    return "\n".join(lines)
