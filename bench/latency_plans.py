"""How well does a library's latency table predict the plans the ILP actually picked?

Copies the library, re-times one table there with the current code (``add_latency_table``), then
checks the teacher, every plan of a bench run (``--bench runs/bench/W1``: its ``*/*/plan.json``)
and ``--students`` random students end to end in one interleaved check, against both the stored
table (as built) and the re-timed one: the same measurements for both. Prints plain and
against-the-teacher errors (median / max %), for the bench's plans and the random students apart.

Example (W1's library after ``python3 -m bench --workloads W1``; ~1 min on 2 cores, run alone):
    python3 bench/latency_plans.py runs/bench/W1/library.h5 --bench runs/bench/W1 --table cpu-b1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library")
    parser.add_argument("--bench", required=True, help="a bench workload's directory (budget/method/plan.json)")
    parser.add_argument("--table", default="cpu-b1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--students", type=int, default=10)
    args = parser.parse_args(argv)

    from lana.context import context_from_library
    from lana.latency import LatencyTable, predict_ms
    from lana.latency_check import _indices, check_latency, errors_vs_teacher, random_choices
    from lana.meters import meter_for_table
    from lana.pipeline import add_latency_table

    stored = LatencyTable.from_library(args.library, args.table)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "library.h5"
        shutil.copy(args.library, copy)
        start = time.perf_counter()
        new = add_latency_table(copy, args.table, threads=args.threads, rounds=5)["table"]
        how = new.fingerprint
        print(f"re-timed {args.table} in {time.perf_counter() - start:.1f} s: correction {how.get('correction')} "
              f"{how.get('whole_fit', '')}; noise {how.get('noise', {}).get('reason') or 'quiet'}")  # fmt: skip
        ctx = context_from_library(copy)
        names, plans = [], []
        for plan_file in sorted(Path(args.bench).glob("*/*/plan.json")):
            plan = json.loads(plan_file.read_text())
            names.append(f"{plan_file.parent.name}@{plan_file.parent.parent.name}")
            plans.append(_indices(new, ctx.layers, plan["choices"]))
        plans += random_choices(new, args.students, seed=0)
        meter = meter_for_table(args.table, threads=args.threads)
        report = check_latency(ctx.inference_teacher(), new, ctx.layers, plans, ctx.load_inference, meter,
                               input_shape=ctx.input_shape)  # fmt: skip
    measured = np.array([row.measured_ms for row in report.rows])
    choices = [row.choices for row in report.rows]
    print(f"check: {report.rounds_run} rounds, quiet {report.quiet}; teacher {measured[0]:.3f} ms "
          f"(stored table {stored.teacher_ms:.3f}, re-timed {new.teacher_ms:.3f}); load {os.getloadavg()[0]:.2f}")  # fmt: skip
    n = len(names)

    def pair(values) -> str:
        values = np.abs(values)
        return f"{np.median(values):.1f} / {values.max():.1f}"

    print("\n| table | teacher % | bench plans | bench plans vs teacher | random | random vs teacher |")
    print("| --- | ---: | --- | --- | --- | --- |")
    for label, table in (("stored", stored), ("re-timed", new)):
        predicted = np.array([predict_ms(table, c) for c in choices])
        error, relative = 100 * (predicted / measured - 1), errors_vs_teacher(predicted, measured)
        print(f"| {label} | {error[0]:+.1f} | {pair(error[1 : 1 + n])} | {pair(relative[:n])} "
              f"| {pair(error[1 + n :])} | {pair(relative[n:])} |")  # fmt: skip
        print("  " + " ".join(f"{name} {e:+.1f}%" for name, e in zip(names, error[1 : 1 + n])))


if __name__ == "__main__":
    main()
