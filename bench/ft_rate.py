"""Issue 26 screening of the fine-tuning rate, on the score split only: does lana's KD fine-tuning
(AdamW at ``FINETUNE_RECIPE.lr``) lose what a student that starts near its teacher already knows?

The teacher itself and the ILP's plan at each budget (a factor of the teacher's predicted latency,
or ms) are fine-tuned by KD at each fixed rate (``adapt_lr`` off), one seed, and their top-1 read
on the score split's images after the first 2,000 (the library scores and the selection ranks on
those first ones); with each model's starting KL from the teacher (:func:`lana.finetune.starting_kl`),
the quantity the adaptive rate keys on::

    python3 -m bench.ft_rate runs/bench/W2/library.h5 --budgets 77.5ms,59.1ms,39.56ms --lrs 5e-4,2.5e-4,1.5e-4 \\
        --out bench/results/checks/ft_rate_W2.json

About 100 s a fine-tuning of W2's teacher on 2 AMD EPYC cores. Never the test split.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import replace


def main(argv=None) -> list[dict]:
    import torch

    from lana.context import context_from_library
    from lana.data import split_of
    from lana.finetune import FINETUNE_RECIPE, finetune, starting_kl
    from lana.library import Library
    from lana.plan import SolveOptions, solve_library
    from lana.student import student_from_context
    from lana.train import predict_logits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("--budgets", default="0.5x")
    parser.add_argument("--lrs", default="5e-4,1.5e-4")
    parser.add_argument("--table", default="cpu-b64")
    parser.add_argument("--epochs", type=float, default=0.5)
    parser.add_argument("--train-images", type=int, default=15000)
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher's own fine-tunings")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    library = Library(args.library)
    ctx = context_from_library(library)
    train = split_of(library.config, "train", limit=args.train_images)
    score = split_of(library.config, "score", limit=None)
    held = type(score)(score.name, score.split, score.images[2000:], score.labels[2000:], score.classes)

    def top1(model) -> float:
        return float((predict_logits(model.eval(), held).argmax(1) == held.labels).float().mean() * 100)

    makers = {} if args.no_teacher else {"teacher": lambda: copy.deepcopy(ctx.teacher)}
    for budget in args.budgets.split(","):
        plan = solve_library(args.library, budget, SolveOptions(table=args.table))
        makers[f"ilp@{budget}"] = lambda plan=plan: student_from_context(ctx, plan)
    rows = []
    for name, make in makers.items():
        start_model = make()
        before, kl = top1(start_model), starting_kl(start_model, ctx.teacher, train)
        for lr in (float(x) for x in args.lrs.split(",")):
            model = make()
            for p in model.parameters():
                p.requires_grad_(True)
            t0 = time.perf_counter()
            recipe = replace(FINETUNE_RECIPE, lr=lr, seed=0)
            finetune(
                model, ctx.teacher, train, epochs=args.epochs, recipe=recipe, adapt_lr=False, desc=f"{name} lr {lr:g}"
            )
            rows.append({"model": name, "kl": kl, "lr": lr, "before": before, "after": top1(model),
                         "seconds": time.perf_counter() - t0})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        out = {"library": args.library, "images": len(held), "epochs": args.epochs, "rows": rows,
               "threads": torch.get_num_threads(), "load_average": os.getloadavg()}  # fmt: skip
        from lana.files import write_json

        write_json(args.out, out)
    return rows


if __name__ == "__main__":
    main()
