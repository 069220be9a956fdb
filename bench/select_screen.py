"""Issue 26 screening, cheap and on the score split only: does the ILP's objective rank the plans
that compete at a budget, and does the measured selection pick better plans than the rules?

For each budget (a factor of the teacher's predicted latency): the selection's pool (the ILP's K
diverse best, greedy, slim-only, uniform width), plus the one-swap neighbours of the ILP's plan
within +-10% of the budget's predicted latency, until at least ``--plans`` plans. Each is assembled
from the library (no fine-tuning) and run on the score split, split in two halves: the selection
picks on the first half (``select``), every figure below is read on the second (``judge``), so
the pick is not judged on the images that picked it. Reports Spearman(-predicted drop, top-1)
over the near-budget plans, the same against the judged KL to the teacher, the split-half Spearman of
top-1 itself (the ceiling any score can reach against a top-1 measured on that many images) and, per
pool member, its judged top-1::

    python3 bench/select_screen.py runs/bench/W2/library.h5 --budgets 0.5x,0.35x --out bench/results/checks/select_screen_W2.json

No latency is measured (predicted only), so it may run beside other work.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _neighbours(problem, choice, low: float, high: float) -> list[tuple[int, ...]]:
    """Plans that differ from ``choice`` in one layer, predicted within [low, high] ms."""
    out = []
    for layer, specs in enumerate(problem.specs):
        for c in range(len(specs)):
            if c != choice[layer] and np.isfinite(problem.scores[layer][c]):
                other = (*choice[:layer], c, *choice[layer + 1 :])
                if low <= problem.predicted_latency_ms(other) <= high:
                    out.append(other)
    return out


def accuracy(model, data, teacher_logits):
    from lana.select import top1_and_kl
    from lana.train import predict_logits

    return top1_and_kl(predict_logits(model, data), teacher_logits, data.labels)


def pool_and_neighbours(library_path, budget: str, options, k: int):
    """``(problem, budget_ms, pool, neighbours)`` at ``budget``: the selection's pool
    (``lana.select.plan_pool``) and a generator of ``("neighbour", plan)``, the one-swap
    neighbours of the ILP's plan within +-10% of the budget that are not already in the pool."""
    from lana.plan import _setup
    from lana.problem import parse_budget
    from lana.select import plan_of, plan_pool

    problem, settings = _setup(library_path, options)
    budget_ms = parse_budget(budget, settings["teacher_ms"].get(problem.table))
    pool = plan_pool(library_path, budget_ms, options, k=k, min_diff=2)
    ilp_choice = tuple(problem.specs[l].index(s) for l, (_, s) in enumerate(pool[0][1].choices))

    def neighbours():
        seen = {plan.choices for _, plan in pool}
        for other in _neighbours(problem, ilp_choice, 0.9 * budget_ms, 1.1 * budget_ms):
            plan = plan_of(problem, other, budget_ms, "neighbour")
            if plan.choices not in seen:
                seen.add(plan.choices)
                yield "neighbour", plan

    return problem, budget_ms, pool, neighbours()


def score_halves(library, images: int):
    """The first ``images`` of the library's score split, in two halves: ``(select, judge)``."""
    from lana.data import split_of

    data = split_of(library.config, "score", limit=images)
    half = len(data) // 2
    return data.subset(half), type(data)(data.name, data.split, data.images[half:], data.labels[half:], data.classes)


def screen(library_path, budget: str, table: str | None, plans: int, k: int, data_halves, ctx,
           exclude: tuple[str, ...] = ()) -> dict:  # fmt: skip
    from itertools import islice

    from lana.correlation import spearman
    from lana.plan import SolveOptions
    from lana.student import student_from_context
    from lana.train import predict_logits

    options = SolveOptions.of(table=table, exclude=exclude)
    problem, budget_ms, pool, neighbours = pool_and_neighbours(library_path, budget, options, k)
    entries = [*pool, *islice(neighbours, max(0, plans - len(pool)))]
    select, judge = data_halves
    teacher = [predict_logits(ctx.teacher, half) for half in (select, judge)]
    rows = []
    for source, plan in entries:
        model = student_from_context(ctx, plan)
        (top1_select, kl_select), (top1, kl) = (accuracy(model, h, t) for h, t in zip((select, judge), teacher))
        rows.append({"source": source, "predicted_drop": float(plan.predicted_drop), "predicted_ms":
                     float(plan.predicted_latency_ms), "top1_select": top1_select, "kl_select": kl_select,
                     "top1": top1, "kl": kl})  # fmt: skip
    near = [r for r in rows if 0.9 * budget_ms <= r["predicted_ms"] <= 1.1 * budget_ms]
    within = [r for r in rows if r["source"] != "neighbour" and r["predicted_ms"] <= budget_ms + 1e-9]
    chosen = max(within, key=lambda r: (r["top1_select"], -r["kl_select"]))
    return {
        "budget": budget, "budget_ms": budget_ms, "table": problem.table, "score": problem.score,
        "spearman_near_budget": spearman([-r["predicted_drop"] for r in near], [r["top1"] for r in near]),
        "spearman_kl_select": spearman([-r["kl_select"] for r in near], [r["top1"] for r in near]),
        # the ceiling: top-1 on one half against top-1 on the other (the noise of 1,000 images)
        "spearman_split_half": spearman([r["top1_select"] for r in near], [r["top1"] for r in near]),
        # the objective against a continuous measure of the same students: KL to the teacher, judged
        "spearman_objective_kl": spearman([-r["predicted_drop"] for r in near], [-r["kl"] for r in near]),
        "exclude": list(exclude), "teacher_top1": accuracy(ctx.teacher, judge, teacher[1])[0],
        "near_plans": len(near), "chosen": chosen["source"], "chosen_top1": chosen["top1"],
        "by_source": {r["source"]: r["top1"] for r in rows if r["source"] != "neighbour"}, "rows": rows,
    }  # fmt: skip


def main(argv=None) -> dict:
    from lana.context import context_from_library
    from lana.library import Library

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("--budgets", default="0.5x,0.35x")
    parser.add_argument("--table", default=None, help="default: the library's first table")
    parser.add_argument("--plans", type=int, default=40, help="near-budget plans at least (one-swap neighbours fill)")
    parser.add_argument("--k", type=int, default=4, help="the ILP's diverse plans in the pool")
    parser.add_argument("--images", type=int, default=2000, help="score-split images, halved: select / judge")
    parser.add_argument(
        "--exclude",
        default="",
        help="candidate specs the solves leave out, comma-separated "
        "(a library built with a family screened without it)",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    library = Library(args.library)
    select, judge = score_halves(library, args.images)
    ctx = context_from_library(library)
    exclude = tuple(s for s in args.exclude.split(",") if s)
    results = [screen(args.library, b, args.table, args.plans, args.k, (select, judge), ctx, exclude)
               for b in args.budgets.split(",")]  # fmt: skip
    for r in results:
        print(f"{r['budget']} (teacher {r['teacher_top1']:.2f}%): Spearman near budget {r['spearman_near_budget']:.3f} over {r['near_plans']} plans "
              f"(KL on the select half: {r['spearman_kl_select']:.3f}; top-1 on the select half, the noise ceiling: "
              f"{r['spearman_split_half']:.3f}; the objective against the judged KL: {r['spearman_objective_kl']:.3f}); chosen {r['chosen']} {r['chosen_top1']:.2f}%; "
              + ", ".join(f"{s} {v:.2f}" for s, v in r["by_source"].items()))  # fmt: skip
    out = {"library": str(args.library), "results": results, "seconds": time.perf_counter() - start,
           "images": {"select": len(select), "judge": len(judge)}, "load_average": os.getloadavg()}  # fmt: skip
    if args.out:
        from lana.files import write_json

        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
