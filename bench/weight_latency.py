"""Issue 25 check: does a model's measured latency depend on its weights, and are paired ratios
transitive? On the models a W1 bench run cached (its teacher, lana's students, the width-scaled
siblings and uniform slim)::

    python3 -m bench.weight_latency runs/bench/W1 --budgets 0.35x,0.5x \\
        --out bench/results/checks/weight_latency_W1.json

1. **Weights.** The competitors are matched to the budget before they are trained (the latency
   bisection of :func:`bench.baselines.match_latency`), and the sibling's bisection times it at its
   random initial weights. Here the same architecture is timed paired (:func:`lana.paired.time_pairs`)
   at its initial weights, at its initial weights with BN statistics re-estimated on 1,024 training
   images (:func:`bench.competitors.reestimate_bn`), and at its initial weights with the trained BN
   statistics, each against the trained model, with a deep copy of the trained model as the control.
2. **Transitivity.** ``r(S, T) / r(L, T)`` against ``r(S, L)`` (and the same for uniform slim): the
   verdict compares each model with lana's student directly, the matching with the teacher.

Times only (in no stage of :data:`bench.provenance.STAGES`). A few minutes on 2 cores; run it alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path


def _row(path: Path) -> dict:
    return json.loads(path.read_text())["row"]


def main(argv=None) -> dict:
    from bench import _seeded
    from bench.baselines import sibling_model, uniform_slim_model
    from bench.competitors import Calibration, reestimate_bn
    from bench.provenance import cpu_model
    from lana.context import context_from_library
    from lana.data import IMAGENET_MEAN, IMAGENET_STD, split_of
    from lana.files import write_json
    from lana.library import Library
    from lana.paired import time_pairs
    from lana.student import load_student
    from lana.teacher import load_state_file
    from lana.train import model_norm

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", help="a workload's bench folder (runs/bench/W1)")
    parser.add_argument("--budgets", default="0.35x,0.5x")
    parser.add_argument("--table", default="cpu-b64")
    parser.add_argument("--sibling", default="resnet18", help="the workload's width-scaled sibling")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    root = Path(args.bench)
    library = Library(root / "library.h5")
    ctx = context_from_library(library)
    train = split_of(library.config, "train", limit=1024)
    norm = model_norm(ctx.teacher)
    calibration = Calibration(train.images, train.labels, train.images[:8], train.labels[:8],
                              norm.get("mean", IMAGENET_MEAN), norm.get("std", IMAGENET_STD))  # fmt: skip
    teacher, shape = ctx.teacher.eval(), ctx.input_shape
    classes = ctx.teacher.get_classifier().out_features
    found = {"bench": str(root), "table": args.table, "cpu": cpu_model(), "load_average_start": os.getloadavg(),
             "budgets": {}}  # fmt: skip
    for budget in args.budgets.split(","):
        folder = root / "competitors" / budget
        knob = _row(folder / "sibling/row.json")["match"]["knob"]
        trained_state = load_state_file(folder / "sibling/model.safetensors")
        trained = sibling_model(args.sibling, knob, classes)
        trained.load_state_dict(trained_state)
        fresh = _seeded(0, sibling_model, args.sibling, knob, classes)  # as the bisection timed it
        fresh_state = fresh.state_dict()
        fresh_bn = _seeded(0, sibling_model, args.sibling, knob, classes)
        fresh_bn.load_state_dict({n: trained_state[n] if "running" in n else v for n, v in fresh_state.items()})
        reestimated = reestimate_bn(_seeded(0, sibling_model, args.sibling, knob, classes), calibration)
        width = _row(folder / "uniform_slim/row.json")["match"]["knob"]
        uniform = uniform_slim_model(teacher, width, shape)
        uniform.load_state_dict(load_state_file(folder / "uniform_slim/model.safetensors"))
        lana = load_student(root / budget / "lana")
        trained, fresh, fresh_bn, uniform, lana = (m.eval() for m in (trained, fresh, fresh_bn, uniform, lana))
        pairs = {
            "sibling initial / trained": (fresh, trained),
            "sibling initial, BN re-estimated / trained": (reestimated, trained),
            "sibling initial, trained BN statistics / trained": (fresh_bn, trained),
            "sibling trained copy / trained": (copy.deepcopy(trained), trained),
            "lana / teacher": (lana, teacher),
            "sibling / teacher": (trained, teacher),
            "uniform slim / teacher": (uniform, teacher),
            "sibling / lana": (trained, lana),
            "uniform slim / lana": (uniform, lana),
        }
        start = time.perf_counter()
        timed = time_pairs(pairs, shape, args.table, blocks=20, max_blocks=40)
        ratios = {name: t.as_dict() for name, t in timed.items()}
        r = {name: t.ratio for name, t in timed.items()}
        found["budgets"][budget] = {
            "sibling width": knob,
            "ratios": ratios,
            # 1.0 when the ratio through the teacher equals the direct one
            "sibling: through the teacher / direct": r["sibling / teacher"] / r["lana / teacher"] / r["sibling / lana"],
            "uniform slim: through the teacher / direct": r["uniform slim / teacher"]
            / r["lana / teacher"]
            / r["uniform slim / lana"],
            "seconds": time.perf_counter() - start,
        }
        print(budget, {k: round(v, 4) for k, v in r.items()}, flush=True)
    found["load_average_end"] = os.getloadavg()
    if args.out:
        write_json(args.out, found)
    print(json.dumps({b: {k: v for k, v in f.items() if k != "ratios"} for b, f in found["budgets"].items()}, indent=1))
    return found


if __name__ == "__main__":
    main()
