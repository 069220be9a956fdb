"""What the least-squares start does for fresh candidates (issue 14 item 2).

Distils every fresh candidate of a space (everything but ``teacher``, ``id`` and ``slim_*``) twice
from the same seeds, without and with ``DistillConfig.ls_fresh`` (the last linear unit fitted to
the teacher block's output minus the candidate's shortcut before the first step), for each step
count asked, and reports the held-out normalised MSE (distillation's own loss) per family:

    python3 bench/fresh_start.py --model tf_efficientnet_lite0 --img-size 64 --limit 15000 \\
        --checkpoint runs/bench/W2/teacher/teacher.safetensors --steps 0 59
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import numpy as np
import torch


def _family(spec: str) -> str:
    from lana.candidates import decode_spec

    return decode_spec(spec)[0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--space", default="compact")
    parser.add_argument("--limit", type=int, default=15000, help="training images (the workload's)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 59], help="distillation steps to compare at")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lana.context import LibraryContext
    from lana.data import load_dataset
    from lana.distill import DistillConfig, distill
    from lana.teacher import load_teacher

    teacher = load_teacher(args.model, 10, checkpoint=args.checkpoint).eval()
    ctx = LibraryContext.for_space(teacher, args.img_size, args.space)
    specs = [["teacher"] + [s for s in layer_specs if s not in ("teacher", "id") and not s.startswith("slim")]
             for layer_specs in ctx.specs]  # fmt: skip
    train = load_dataset(args.dataset, "train", args.img_size, limit=args.limit)
    held_out = load_dataset(args.dataset, "score", args.img_size)
    losses: dict = {}
    for steps in args.steps:
        for fresh in (False, True):
            config = DistillConfig(max_steps=steps, ls_fresh=fresh, epochs=1e9)
            with tempfile.TemporaryDirectory() as work:
                torch.manual_seed(0)
                chunks = distill(teacher, ctx.layers, specs, ctx.build, train, held_out, work, config)
            losses[(steps, fresh)] = {k: v for c in chunks for k, v in c.losses.items()}
    rows = []
    for steps in args.steps:
        by_family = defaultdict(list)
        for key, plain in losses[(steps, False)].items():
            by_family[_family(key.split("/", 1)[1])].append((plain, losses[(steps, True)][key]))
        for family, pairs in sorted(by_family.items()):
            plain, fitted = np.array(pairs).T
            rows.append({
                "steps": steps, "family": family, "candidates": len(pairs),
                "median_plain": float(np.median(plain)), "median_ls": float(np.median(fitted)),
                "better": int((fitted < plain).sum()),
            })  # fmt: skip
    print(f"{'steps':>5}  {'family':<10} {'n':>3}  {'nMSE plain':>10}  {'nMSE LS':>8}  better")
    for r in rows:
        print(f"{r['steps']:>5}  {r['family']:<10} {r['candidates']:>3}  {r['median_plain']:>10.4f}  "
              f"{r['median_ls']:>8.4f}  {r['better']}/{r['candidates']}")  # fmt: skip
    result = {"args": vars(args), "rows": rows}
    if args.out:
        from lana.files import write_json

        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
