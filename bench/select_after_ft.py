"""Issue 26 screening, after fine-tuning: does the measured selection's criterion (each pool plan's
top-1 and KL on the score split *before* fine-tuning) pick the plan that is best *after* it?

At each budget (a factor of the teacher's predicted latency), every plan of the selection's pool
(the ILP's K diverse best, greedy, slim-only, uniform width: ``lana.select.plan_pool``; with
``--neighbours N`` also N one-swap neighbours of the ILP's plan, ranked but never kept) is
assembled from the library, measured before fine-tuning on the first half of the score split
(``select``, what the selection sees), KD fine-tuned with lana's recipe (``--seeds`` seeds, default one; the epochs
and training images given), and measured again on the second half (``judge``), so no figure is read on
the images that picked it and none on the test split. Reports, per budget, the plan the selection
keeps (``lana.select.select_plan``'s rule), the best plan after fine-tuning and the regret between
them (and the regret of ranking by top-1 alone, the rule before), and Spearman between the
criterion and the top-1 after fine-tuning over the pool::

    python3 -m bench.select_after_ft runs/bench/W2/library.h5 --budgets 0.5x,0.35x --table cpu-b64 \\
        --train-images 15000 --epochs 0.5 --seeds 2 --out bench/results/checks/select_after_ft_W2.json

No latency is measured (predicted only); fine-tuning makes it minutes per plan on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("select_after_ft")


def after_ft(library_path, budget: str, options, k: int, halves, train_set, epochs: float, ctx,
             neighbours: int = 0, seeds: int = 1) -> dict:  # fmt: skip
    """The pool at ``budget`` (and up to ``neighbours`` one-swap neighbours of the ILP's plan within
    +-10% of the budget, which the selection never keeps but which widen the ranking), each plan
    measured before (select half) and after fine-tuning (judge half; the mean over ``seeds``
    fine-tuning seeds)."""
    from dataclasses import replace
    from itertools import islice

    from bench.select_screen import accuracy, pool_and_neighbours
    from lana.correlation import spearman
    from lana.finetune import FINETUNE_RECIPE, finetune
    from lana.select import Contender, select_plan
    from lana.student import student_from_context
    from lana.train import predict_logits

    problem, budget_ms, pool, more = pool_and_neighbours(library_path, budget, options, k)
    pool = [*pool, *islice(more, neighbours)]
    select, judge = halves
    teacher = [predict_logits(ctx.teacher, half) for half in (select, judge)]
    rows = []
    for i, (source, plan) in enumerate(pool):
        start = time.perf_counter()
        after = []  # (top-1, KL) on the judge half, one per fine-tuning seed
        for seed in range(seeds):
            model = student_from_context(ctx, plan)
            if seed == 0:
                (top1_select, kl_select), (top1_before, _) = (accuracy(model, h, t)
                                                              for h, t in zip((select, judge), teacher))  # fmt: skip
            for p in model.parameters():  # copies of the teacher's blocks come frozen
                p.requires_grad_(True)
            finetune(model, ctx.teacher, train_set, epochs=epochs, recipe=replace(FINETUNE_RECIPE, seed=seed),
                     desc=f"{budget} {source} ({i + 1}/{len(pool)}) seed {seed}")  # fmt: skip
            model.eval()
            ctx.teacher.eval()
            after.append(accuracy(model, judge, teacher[1]))
        top1, kl = (float(sum(v) / len(v)) for v in zip(*after))
        rows.append({"source": source, "predicted_drop": float(plan.predicted_drop),
                     "predicted_ms": float(plan.predicted_latency_ms), "top1_select": top1_select,
                     "kl_select": kl_select, "top1_before": top1_before, "top1_after": top1, "kl_after": kl,
                     "top1_after_seeds": [a[0] for a in after], "seconds": time.perf_counter() - start})  # fmt: skip
        log.info("%s %s: before %.2f%% (select half), after %.2f%% (judge half, %d seeds)", budget, source,
                 top1_select, top1, seeds)  # fmt: skip
    within = [i for i, r in enumerate(rows) if r["source"] != "neighbour" and r["predicted_ms"] <= budget_ms + 1e-9]
    # lana's rule (lana.select.select_plan, on predicted times here), and top-1 alone (the rule before)
    contenders = [Contender(rows[i]["source"], pool[i][1], rows[i]["top1_select"], rows[i]["kl_select"],
                            rows[i]["predicted_ms"]) for i in within]  # fmt: skip
    chosen = rows[within[contenders.index(select_plan(contenders, budget_ms, 0.0, images=len(select)))]]
    by_top1 = max((rows[i] for i in within), key=lambda r: (r["top1_select"], -r["kl_select"]))
    best = max((rows[i] for i in within), key=lambda r: r["top1_after"])
    return {
        "budget": budget, "budget_ms": budget_ms, "table": problem.table, "plans": len(rows),
        "chosen": chosen["source"], "chosen_after": chosen["top1_after"], "best_after": best["source"],
        "best_after_top1": best["top1_after"], "regret": best["top1_after"] - chosen["top1_after"],
        "regret_top1_only": best["top1_after"] - by_top1["top1_after"],
        "pool": len(within),
        "spearman_select_vs_after": spearman([r["top1_select"] for r in rows], [r["top1_after"] for r in rows]),
        "spearman_kl_vs_after": spearman([-r["kl_select"] for r in rows], [r["top1_after"] for r in rows]),
        "spearman_objective_vs_after": spearman([-r["predicted_drop"] for r in rows], [r["top1_after"] for r in rows]),
        "rows": rows,
    }  # fmt: skip


def main(argv=None) -> dict:
    from bench.select_screen import score_halves
    from lana.context import context_from_library
    from lana.data import split_of
    from lana.library import Library
    from lana.plan import SolveOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("--budgets", default="0.5x,0.35x")
    parser.add_argument("--table", default=None, help="default: the library's first table")
    parser.add_argument("--k", type=int, default=4, help="the ILP's diverse plans in the pool")
    parser.add_argument("--images", type=int, default=2000, help="score-split images, halved: select / judge")
    parser.add_argument("--train-images", type=int, default=None, help="fine-tuning images (default: all)")
    parser.add_argument("--epochs", type=float, default=0.5, help="fine-tuning epochs of each plan")
    parser.add_argument("--neighbours", type=int, default=0,
                        help="one-swap neighbours of the ILP's plan added to the ranking (never kept)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds of each plan (top-1 after: their mean)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")  # fmt: skip
    start = time.perf_counter()
    library = Library(args.library)
    select, judge = score_halves(library, args.images)
    train_set = split_of(library.config, "train", limit=args.train_images)
    ctx = context_from_library(library)
    options = SolveOptions.of(table=args.table)
    results = []
    for budget in args.budgets.split(","):
        found = after_ft(args.library, budget, options, args.k, (select, judge), train_set, args.epochs, ctx,
                         args.neighbours, args.seeds)  # fmt: skip
        results.append(found)
        print(f"{budget}: kept {found['chosen']} ({found['chosen_after']:.2f}% after fine-tuning), best after "
              f"{found['best_after']} ({found['best_after_top1']:.2f}%): regret {found['regret']:.2f}; Spearman over "
              f"{found['plans']} plans, against top-1 after: before-FT top-1 {found['spearman_select_vs_after']:.3f}, "
              f"KL {found['spearman_kl_vs_after']:.3f}, the ILP objective {found['spearman_objective_vs_after']:.3f}")  # fmt: skip
    out = {"library": str(args.library), "results": results, "seconds": time.perf_counter() - start,
           "images": {"select": len(select), "judge": len(judge), "train": len(train_set)}, "epochs": args.epochs,
           "seeds": args.seeds, "table": options.table,
           "load_average": os.getloadavg()}  # fmt: skip
    if args.out:
        from lana.files import write_json

        write_json(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()
