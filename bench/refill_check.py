"""Issue 26: does the measured selection land in the band where one refill did not? Replays a bench
run's selection (its budget and the target its latency loop settled on, from the budget's
``lana/report.json``) on the same library with the current :func:`lana.select.selection`, and
writes where the pools measured and which plan it kept. Times plans (paired with the teacher): run
it alone::

    python3 -m bench.refill_check runs/bench/W2/library.h5 runs/bench/W2/0.35x/lana/report.json \\
        --out bench/results/checks/refill_check_W2_0.35x.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path


def main(argv=None) -> dict:
    from lana.context import context_from_library
    from lana.data import split_of
    from lana.library import Library
    from lana.plan import SolveOptions
    from lana.select import BAND, selection

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("report", help="a bench budget's lana/report.json: its budget, table and target")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    before = json.loads(Path(args.report).read_text())
    library = Library(args.library)
    ctx = context_from_library(library)
    score_set = split_of(library.config, "score", limit=library.config.get("score_images"))
    load, start = os.getloadavg(), time.perf_counter()
    budget_ms, target_ms = before["budget_ms"], before["selection"]["target_ms"]
    _plan, record = selection(ctx, args.library, budget_ms, target_ms, score_set, SolveOptions(table=before["table"]))
    kept = next(p for p in record["plans"] if p["source"] == record["chosen"])
    out = {"library": str(args.library), "report": str(args.report), "budget_ms": budget_ms, "target_ms": target_ms,
           "band": [1 - BAND, 1.0], "before": {"chosen": before["selection"]["chosen"], "plans": before["selection"]["plans"]},
           "after": record, "kept_of_budget": kept["measured_ms"] / budget_ms, "seconds": time.perf_counter() - start,
           "load_average": {"start": load, "end": os.getloadavg()}}  # fmt: skip
    print(f"kept {record['chosen']} at {out['kept_of_budget']:.3f} of the budget ({len(record['plans'])} plans, "
          f"{out['seconds']:.0f} s; before: {before['selection']['chosen']})")  # fmt: skip
    if args.out:
        from lana.files import write_json

        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
