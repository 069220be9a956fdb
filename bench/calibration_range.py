"""Which calibration makes the ILP's plans best: a fit on every sampled student, or only on those
short of saturation (the range ``lana calibrate`` fits since issue 15's W1 rerun)?

Reads a calibrated library's stored samples (no student is re-measured for the fits), fits the
calibrated score three ways on the samples not held out (the one-swap sum as is; every student;
students within :func:`lana.calibrate.max_fitted_drop`), reports each one's Spearman on the
held-out plans, all of them and those within range, then solves the ILP at each budget of a bench
run (``--bench runs/bench/W1``: its ``*/lana/plan.json`` give table and budget) and measures the
plan's top-1 drop before fine-tuning on the score split, as calibration measures its students.

Example (W1, after ``python3 -m bench --workloads W1``; ~1 min on 2 cores):
    python3 bench/calibration_range.py runs/bench/W1/library.h5 --bench runs/bench/W1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library")
    parser.add_argument(
        "--bench", required=True, help="a bench workload's directory (budget folders with lana/plan.json)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch

    from lana import solver as ilp
    from lana.calibrate import CALIBRATED, _measure, fit_calibration, max_fitted_drop
    from lana.context import context_from_library
    from lana.correlation import spearman
    from lana.data import load_dataset
    from lana.library import Library
    from lana.problem import load_problem

    library = Library(args.library)
    cal = library.calibrations.get(CALIBRATED)
    if not cal:
        raise SystemExit(f"{args.library} has no {CALIBRATED} calibration: run `lana calibrate {args.library}` first")
    plans = [tuple(s["plan"]) for s in cal["samples"]]
    drops = np.array([s["drop"] for s in cal["samples"]])
    held = np.array([s["held_out"] for s in cal["samples"]])
    fit_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
    ctx = context_from_library(library)
    cap = max_fitted_drop(cal["teacher_top1"], getattr(ctx.teacher, "num_classes", None))
    print(f"{len(plans)} students (drop quantiles 0/25/50/75/100: {np.percentile(drops, [0, 25, 50, 75, 100]).round(1)}), "
          f"{len(held_rows)} held out; range: drop <= {cap:.1f}")  # fmt: skip
    budgets = {}
    for plan_file in sorted(Path(args.bench).glob("*/lana/plan.json")):
        plan = json.loads(plan_file.read_text())
        budgets[plan_file.parent.parent.name] = (plan["table"], plan["budget_ms"])
    base = cal["base"]
    problems = {t: load_problem(args.library, t, base) for t in {t for t, _ in budgets.values()} | {None}}

    def fits(problem) -> dict:
        chosen = [plans[i] for i in fit_rows]
        return {
            "one-swap sum": [np.asarray(s, dtype=np.float64) for s in problem.scores],
            "fit on every student": fit_calibration(problem, chosen, drops[fit_rows])[0],
            "fit within range": fit_calibration(problem, chosen, drops[fit_rows], max_drop=cap)[0],
        }

    near = [i for i in held_rows if drops[i] <= cap]
    print(f"\n| score | held-out Spearman ({len(held_rows)} plans) | within range ({len(near)}) |")
    print("| --- | ---: | ---: |")
    for name, scores in fits(problems[None]).items():
        predicted = {i: sum(scores[l][c] for l, c in enumerate(plans[i])) for i in held_rows}
        print(f"| {name} | {spearman([predicted[i] for i in held_rows], drops[held_rows]):.3f} "
              f"| {spearman([predicted[i] for i in near], drops[near]):.3f} |")  # fmt: skip

    built = library.config
    data = load_dataset(built["dataset"], "score", built["img_size"], seed=built.get("seed", 0),
                        limit=built.get("score_images"))  # fmt: skip
    device = torch.device(args.device)
    print("\n| budget | " + " | ".join(f"{name}: predicted / measured drop" for name in fits(problems[None])) + " |")
    print("| --- |" + " ---: |" * 3)
    for budget, (table, budget_ms) in budgets.items():
        problem = problems[table]
        cells = []
        for scores in fits(problem).values():
            choice = tuple(ilp.solve(dataclasses.replace(problem, scores=scores), budget_ms).choice)
            measured = _measure(ctx, problem, [choice], data, device, cal["teacher_top1"])[0]
            cells.append(f"{sum(scores[l][c] for l, c in enumerate(choice)):.2f} / {measured:.2f}")
        print(f"| {budget} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
