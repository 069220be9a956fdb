"""What a library says without training anything more: family picks, fronts, space pruning (issue 10).

Everything here solves the ILP on a library's (score, latency) data; nothing is measured anew, so
the fronts are *predicted* ones (summed score against predicted latency), read as such.

* :func:`family_picks`: how often the ILP picks each candidate family at 0.7x/0.5x/0.35x.
* :func:`fronts`: the predicted front over a grid of budgets with every family, without the
  families of issue 10 (ghost, rep, repdw, ``_lin``, int8), and without each of them alone: what
  each one adds.
* :func:`space_pruning`: how many candidates the exact presolve drops (dominated in score and
  latency on the budget's table, then by the Lagrangian bound) and the ILP's speed-up from it,
  with a check that the plan is the same.

``python3 -m bench.library_analysis LIB [--table T]`` prints all three as Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections import Counter

import numpy as np

__all__ = ["NEW_FAMILIES", "analyse", "family", "family_picks", "fronts", "space_pruning"]

# the families issue 10 added; int8 twins (``*_int8``) count as their own family
NEW_FAMILIES = ("ghost", "rep", "repdw", "lin", "int8")
PICK_FACTORS = (0.7, 0.5, 0.35)


def family(spec: str) -> str:
    """``ir_k3_e3_lin`` -> ``lin``, ``ghost_k3_r2_se`` -> ``ghost``, ``dw_k3_int8`` -> ``int8``;
    otherwise the spec's kind (``ir``, ``teacher``, ``id``, ...)."""
    parts = spec.split("_")
    if parts[-1] == "int8":
        return "int8"
    if "lin" in parts[1:]:
        return "lin"
    return parts[0]


def _without(problem, families) -> object:
    """The problem with every candidate of ``families`` made unusable (NaN score)."""
    scores = tuple(
        np.where([family(s) in families for s in specs], np.nan, np.asarray(row, float))
        for specs, row in zip(problem.specs, problem.scores)
    )
    return dataclasses.replace(problem, scores=scores)


def _solve(problem, budget_ms: float):
    from lana.solver import InfeasibleBudget, solve

    try:
        return solve(problem, budget_ms)
    except InfeasibleBudget:
        return None


def family_picks(problem, factors=PICK_FACTORS) -> dict:
    """Per budget factor: the families of the ILP's plan, counted over layers (None: infeasible)."""
    teacher = problem.teacher_ms()
    out = {}
    for factor in factors:
        solution = _solve(problem, factor * teacher)
        out[f"{factor:g}x"] = (
            None
            if solution is None
            else dict(Counter(family(problem.specs[l][c]) for l, c in enumerate(solution.choice)))
        )
    return out


def fronts(problem, factors=None) -> dict:
    """Predicted drop at each budget factor: all families, none of issue 10's, and each one removed.

    Returns:
        ``{"factors": [...], "present": [families of issue 10 in the library], "fronts": {name:
        [drop or None]}}`` with names ``all``, ``without new`` and ``without <family>``.
    """
    factors = list(factors if factors is not None else np.round(np.linspace(0.25, 1.0, 16), 3))
    present = sorted({family(s) for specs in problem.specs for s in specs} & set(NEW_FAMILIES))
    variants = {"all": problem, "without new": _without(problem, present)}
    variants.update({f"without {f}": _without(problem, {f}) for f in present})
    teacher = problem.teacher_ms()
    result = {}
    for name, variant in variants.items():
        drops = []
        for factor in factors:
            solution = _solve(variant, factor * teacher)
            drops.append(None if solution is None else float(solution.objective))
        result[name] = drops
    return {"factors": factors, "present": present, "fronts": result}


def space_pruning(problem, factors=PICK_FACTORS, repeats: int = 5) -> list[dict]:
    """Candidates left by each presolve step and HiGHS time with and without it, per budget.

    Times are medians of ``repeats`` alternating runs in this process (HiGHS imported first).
    ``same_plan`` checks that the presolved optimum equals the whole model's.
    """
    from lana.solver import (
        Model,
        _constraints,  # the same rows `solve` builds
        presolve,
        solve,
        solve_model,
    )

    teacher = problem.teacher_ms()
    rows = []
    for factor in factors:
        budget = factor * teacher
        full = Model(
            layers=problem.layers, cost=problem.scores, constraints=_constraints(problem, budget, None, None, {})
        )
        kept = presolve.usable(full)
        usable = presolve.take(full, kept)
        dominated = presolve.undominated(usable)
        after_dominance = sum(map(len, dominated))
        bounded = presolve.bound_reduced(presolve.take(usable, dominated))
        after_bound = sum(map(len, bounded[0])) if bounded else after_dominance
        solve_model(usable)  # warm-up: imports
        whole, pre = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            raw = solve_model(usable)
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            try:
                solution = solve(problem, budget)
            except Exception:  # noqa: BLE001 - infeasible: both agree if raw is infeasible too
                solution = None
            pre.append(time.perf_counter() - t0)
        raw_choice = None if raw.status != "optimal" else tuple(int(k[c]) for k, c in zip(kept, raw.choice))
        same = (raw_choice is None) == (solution is None) and (
            solution is None or abs(problem.predicted_drop(raw_choice) - solution.objective) <= 1e-9
        )
        rows.append(
            {
                "budget": f"{factor:g}x",
                "candidates": sum(map(len, problem.specs)),
                "usable": sum(map(len, kept)),
                "after_dominance": after_dominance,
                "after_bound": after_bound,
                "whole_s": statistics.median(whole),
                "presolved_s": statistics.median(pre),
                "same_optimum": bool(same),
            }
        )
    return rows


def analyse(path, table: str | None = None) -> dict:
    """All three analyses of the library at ``path`` on ``table`` (the budget's)."""
    from lana.problem import load_problem

    problem = load_problem(path, table)
    return {
        "table": problem.table,
        "score": problem.score,
        "picks": family_picks(problem),
        "fronts": fronts(problem),
        "pruning": space_pruning(problem),
    }


def markdown(analysis: dict) -> list[str]:
    """The analysis as Markdown lines (tables), for BENCHMARKS.md and the command line."""
    lines = [
        f"Family picks of the ILP (layers per family; budget on {analysis['table']}, score {analysis['score']}):",
        "",
    ]
    picks = analysis["picks"]
    families = sorted({f for counts in picks.values() if counts for f in counts})
    lines += ["| budget | " + " | ".join(families) + " |", "|---|" + "---:|" * len(families)]
    for budget, counts in picks.items():
        cells = ["infeasible"] * len(families) if counts is None else [str(counts.get(f, 0)) for f in families]
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    front = analysis["fronts"]
    lines += [
        "",
        (
            "Predicted front (summed score of the ILP's plan; lower is better; — = infeasible) with every family, "
            "without the families of issue 10 present here (" + (", ".join(front["present"]) or "none") + "), and "
            "without each alone:"
        ),
        "",
    ]
    names = list(front["fronts"])
    lines += ["| budget | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, factor in enumerate(front["factors"]):
        cells = ["—" if front["fronts"][n][i] is None else f"{front['fronts'][n][i]:.3f}" for n in names]
        lines.append(f"| {factor:g}x | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Exact presolve (dominance, then Lagrangian bound) and the ILP's time with HiGHS, median of 5:",
        "",
        "| budget | candidates | usable | after dominance | after bound | whole model s | presolved s | speed-up | same optimum |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in analysis["pruning"]:
        lines.append(
            f"| {r['budget']} | {r['candidates']} | {r['usable']} | {r['after_dominance']} | {r['after_bound']} | "
            f"{r['whole_s']:.4f} | {r['presolved_s']:.4f} | {r['whole_s'] / max(r['presolved_s'], 1e-9):.1f}x | "
            f"{'yes' if r['same_optimum'] else 'NO'} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.library_analysis", description=__doc__.split("\n")[0])
    parser.add_argument("library")
    parser.add_argument("--table", default=None, help="the budget's latency table (default: the library's first)")
    args = parser.parse_args(argv)
    print("\n".join(markdown(analyse(args.library, args.table))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
