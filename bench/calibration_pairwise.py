"""Does a pairwise term pay (issue 15 item 2)? Held-out ranking of the calibrated score with and
without one term per pair of neighbouring layers both replaced.

Reads the whole students a calibration measured (``lana calibrate`` stores them in the library),
or draws them from a synthetic library whose truth has a known pairwise part, and over repeated
random splits (3/4 fitted, 1/4 held out) reports the Spearman between predicted and measured drop
on the held-out plans for the one-swap sum, the additive calibration and the pairwise one:

    python3 bench/calibration_pairwise.py runs/bench/W2/library.h5
    python3 bench/calibration_pairwise.py --synthetic 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def _synthetic(seed: int, count: int, folder: Path):
    """A synthetic library and drops with a known additive and pairwise part (as tests/test_calibrate.py)."""
    from lana.calibrate import sample_plans
    from lana.problem import load_problem
    from lana.synthetic import write_random_library

    problem = load_problem(write_random_library(folder / "lib.h5", 8, 10, seed=seed, tables=("cpu-b1",)))
    rng = np.random.default_rng(seed)
    teacher = [specs.index("teacher") for specs in problem.specs]
    extra, pair = rng.uniform(0.5, 3.0, len(teacher)), rng.uniform(0.0, 0.4, len(teacher))
    plans, drops = sample_plans(problem, count, seed=seed), []
    for choice in plans:
        replaced = [c != t for c, t in zip(choice, teacher)]
        drops.append(1.5 * problem.predicted_drop(choice) + sum(e for e, r in zip(extra, replaced) if r)
                     + sum(p for p, a, b in zip(pair, replaced, replaced[1:]) if a and b) + rng.normal(0, 0.05))  # fmt: skip
    return problem, plans, drops


def _stored(path: str):
    from lana.calibrate import CALIBRATED
    from lana.library import Library
    from lana.problem import load_problem

    calibration = Library(path).calibrations.get(CALIBRATED)
    if not calibration:
        raise SystemExit(f"{path} has no calibration: run `lana calibrate {path}` first")
    problem = load_problem(path, score=calibration["base"])
    samples = calibration["samples"]
    return problem, [tuple(s["plan"]) for s in samples], [s["drop"] for s in samples]


def evaluate(problem, plans, drops, splits: int = 50, seed: int = 0) -> dict:
    """Median (and interquartile range) of the held-out Spearman of each predictor over ``splits``."""
    from lana.calibrate import fit_calibration, predict_drop
    from lana.correlation import spearman

    rng = np.random.default_rng(seed)
    rhos = {"one_swap": [], "additive": [], "pairwise": []}
    for _ in range(splits):
        order = rng.permutation(len(plans))
        cut = len(plans) - max(3, len(plans) // 4)
        fit, held = order[:cut], order[cut:]
        truth = [drops[i] for i in held]
        rhos["one_swap"].append(spearman([problem.predicted_drop(plans[i]) for i in held], truth))
        for name, pairwise in (("additive", False), ("pairwise", True)):
            scores, info = fit_calibration(problem, [plans[i] for i in fit], [drops[i] for i in fit], pairwise=pairwise)
            rhos[name].append(spearman([predict_drop(scores, info, plans[i]) for i in held], truth))
    return {
        name: {"median": float(np.nanmedian(v)), "iqr": float(np.subtract(*np.nanpercentile(v, [75, 25])))}
        for name, v in rhos.items()
    } | {"plans": len(plans), "splits": splits}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library", nargs="?", help="a calibrated library")
    parser.add_argument("--synthetic", type=int, default=None, help="seed of a synthetic library instead")
    parser.add_argument("--samples", type=int, default=40, help="plans of the synthetic library")
    parser.add_argument("--splits", type=int, default=50)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.synthetic is not None:
            problem, plans, drops = _synthetic(args.synthetic, args.samples, Path(folder))
        elif args.library:
            problem, plans, drops = _stored(args.library)
        else:
            parser.error("give a calibrated library or --synthetic SEED")
        result = evaluate(problem, plans, drops, args.splits)
    print(f"{result['plans']} plans, {result['splits']} random splits (1/4 held out): held-out Spearman, median (IQR)")
    for name in ("one_swap", "additive", "pairwise"):
        print(f"  {name:<9} {result[name]['median']:.3f} ({result[name]['iqr']:.3f})")
    return result


if __name__ == "__main__":
    main()
