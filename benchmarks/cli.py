"""``bus bench``: run the benchmarks and write the results and the report.

    bus bench                                  # memory:// only, quick profile
    bus bench --all                            # memory + every broker provisioning finds
    bus bench redis://127.0.0.1:6379/0 nats    # these (a bare kind is provisioned)
    bus bench --profile full --out bench-out --set consume_ack.count=50000
    bus bench --report-only bench-out/results.json

Writes ``DIR/results.json``, ``DIR/report.md`` and ``DIR/*.png`` (default DIR:
``bus-results/bench``). Progress goes to stderr, one line per workload.
Exit status: 0 when every requested target ran (figures or not), 1 when a workload
failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


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
    from benchmarks.runner import compute_ratios, plan_all, plan_urls, run_benchmarks

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    conformance_dir = Path(args.conformance_dir)
    previous = Path(args.compare) if args.compare else None
    if args.report_only:
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
    if args.all:
        plans = plan_all()
        known = {p.url for p in plans}
        plans += [p for p in plan_urls(args.urls) if p.url not in known]
    else:
        plans = plan_urls(args.urls or ["memory://"])
    progress = Progress(0, enabled=not args.quiet)
    for plan in plans:
        where = plan.reason.splitlines()[0] if plan.reason else f"{plan.origin}"
        progress.note(f"{plan.backend}: {where}")
    command = ["bus", "bench", *(sys.argv[1:] if argv is None else argv)]
    try:
        results = asyncio.run(run_benchmarks(plans, config, progress=progress, command=command))
    except KeyboardInterrupt:
        print("bus bench: interrupted", file=sys.stderr)
        return 130
    path = results.write(out / "results.json")
    report = write_report(results, out, conformance_dir, previous)
    print(f"results written to {path}")
    print(f"report written to {report}")
    failed = [p for p in results.points if p.error]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
