"""``bus bench``: run the benchmarks and write the results and the report.

    bus bench                                  # memory:// only, quick profile
    bus bench --all                            # memory + every broker provisioning finds
    bus bench redis://127.0.0.1:6379/0 nats    # these (a bare kind is provisioned)
    bus bench --profile full --out bench-out --set consume_ack.count=50000
    bus bench --report-only bench-out/results.json

Writes ``DIR/results.json``, ``DIR/report.md`` and ``DIR/*.png`` (default DIR:
``bus-results/bench``). Progress goes to stderr, one line per workload.
Exit status: 0 when every target was measured and no workload failed; 1 when a
target was not (it could not connect, or its broker could not be provisioned: status
``error`` or ``skipped``) or a workload failed, after the results and the report are
written; 2 on bad usage (a bad ``--set``, a ``--compare`` or ``--report-only`` file
that is missing or not a results file), before anything is measured.
Warnings (a broker given twice, a clean-up that overran, a library option that
differs from the raw side's setting) go to stderr even with ``--quiet``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.results import Results

__all__ = ["build_parser", "main", "measured"]


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.config import PROFILES, WORKLOADS

    parser = argparse.ArgumentParser(
        prog="bus bench",
        description="Benchmark the bus library beside each broker's raw client and write "
        "a decision report.",
    )
    parser.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="bus URLs to measure (memory://, redis://..., amqp://..., nats://..., kafka://...)"
        " or a bare kind (redis, rabbitmq, nats, kafka) to provision; default memory://",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="memory:// plus every broker the provisioning can find or start",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", default="bus-results/bench", metavar="DIR")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set consume_ack.count=500 --set runs=5",
    )
    parser.add_argument(
        "--workloads",
        metavar="A,B",
        help=f"only these workloads (of {', '.join(WORKLOADS)})",
    )
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-client baselines")
    parser.add_argument(
        "--conformance-dir",
        default="bus-results",
        metavar="DIR",
        help="where the conformance-<scheme>.json files are (default bus-results)",
    )
    parser.add_argument(
        "--report-only",
        metavar="RESULTS_JSON",
        help="do not measure: rewrite the report from an existing results.json",
    )
    parser.add_argument(
        "--compare",
        metavar="RESULTS_JSON",
        help="an earlier results.json: the report says which figures reproduced",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--show-config", action="store_true", help="print the config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.config import apply_overrides, profile
    from benchmarks.progress import Progress
    from benchmarks.report import write_report
    from benchmarks.results import Results
    from benchmarks.runner import (
        KINDS,
        compute_ratios,
        dedupe_plans,
        plan_all,
        plan_urls,
        run_benchmarks,
    )

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    conformance_dir = Path(args.conformance_dir)
    previous = Path(args.compare) if args.compare else None
    # a results file the run needs is checked before anything is measured
    if previous is not None and _unreadable(previous, "--compare"):
        return 2
    if args.report_only:
        if _unreadable(Path(args.report_only), "--report-only"):
            return 2
        results = Results.read(Path(args.report_only))
        results.ratios = compute_ratios(results.points)  # the current rules
        path = write_report(results, out, conformance_dir, previous)
        print(f"report written to {path}")
        return 0
    try:
        overrides = list(args.set)
        if args.workloads:
            overrides.append(f"workloads={args.workloads}")
        if args.no_raw:
            overrides.append("raw=false")
        config = apply_overrides(profile(args.profile), overrides)
    except ValueError as exc:
        print(f"bus bench: error: {exc}", file=sys.stderr)
        return 2
    if args.show_config:
        print(config.model_dump_json(indent=2))
        return 0
    # Per-message debug logging would distort every figure: keep the bus quiet.
    logging.getLogger("bus").setLevel(logging.WARNING)
    logging.getLogger("backends").setLevel(logging.WARNING)
    if args.all:  # a bare kind is provisioned by plan_all already
        plans = plan_all() + plan_urls([u for u in args.urls if u not in KINDS])
    else:
        plans = plan_urls(args.urls or ["memory://"])
    # each broker once, however often it was named (`--all` and its URL again)
    plans, dropped = dedupe_plans(plans)
    for text in dropped:
        print(f"bus bench: warning: {text}", file=sys.stderr)
    progress = Progress(0, enabled=not args.quiet)
    for plan in plans:
        where = plan.reason.splitlines()[0] if plan.reason else f"{plan.origin}"
        progress.note(f"{plan.id}: {where}")
    command = ["bus", "bench", *(sys.argv[1:] if argv is None else argv)]
    try:
        results = asyncio.run(run_benchmarks(plans, config, progress=progress, command=command))
    except KeyboardInterrupt:
        print("bus bench: interrupted", file=sys.stderr)
        return 130
    path = results.write(out / "results.json")
    report = write_report(results, out, conformance_dir, previous)
    if args.quiet:  # shown with the progress otherwise
        for text in results.warnings:
            print(f"bus bench: warning: {text}", file=sys.stderr)
    print(f"results written to {path}")
    print(f"report written to {report}")
    return 0 if measured(results) else 1


def measured(results: Results) -> bool:
    """Whether every target of ``results`` was measured (status ``ok``) and no
    workload failed: the exit status of ``bus bench`` (0, else 1)."""
    return all(t.status == "ok" for t in results.targets) and not any(
        p.error for p in results.points
    )


def _unreadable(path: Path, option: str) -> bool:
    """Whether ``path`` is not a readable results file (said on stderr)."""
    from benchmarks.results import Results

    try:
        Results.read(path)
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    except ValueError as exc:  # not JSON, or not a results file
        problem = f"not a results file ({str(exc).splitlines()[0]})"
    else:
        return False
    print(f"bus bench: error: {option} {path}: {problem}", file=sys.stderr)
    return True


if __name__ == "__main__":
    raise SystemExit(main())
