"""Did the KD normalisation bug sink W2's sibling? (issue 25 item 1)

Reruns the old W2 sibling row (LCNet from scratch, KD from the ImageNet Lite0 teacher fine-tuned
on Fashion-MNIST at 64 px, 15,000 training images) twice with the same seed: once as the bench
now trains it (the teacher normalises the view with its own mean = std = 0.5) and once with the
bug emulated (the teacher fed the student's ImageNet-normalised batch, as before 8a1584f).
The width is the old run's: 2.465 M parameters at 0.5x is LCNet x1.27 (0.35x: 1.551 M, x0.95).

    python3 -m bench.kd_norm_check --out runs/kdcheck [--widths 1.27,0.95] [--seeds 3] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from lana.files import write_json

log = logging.getLogger(__name__)

# the old W2 (74d0d8d): Lite0 from ImageNet, 2 epochs at 64 px on 15,000 images; sibling 3 epochs
OLD_W2 = {"model": "tf_efficientnet_lite0", "img_size": 64, "teacher_epochs": 2.0, "limit": 15000}


def _train_sibling(teacher, train_set, test_set, width: float, epochs: float, bug: bool, device, seed: int) -> dict:
    from bench.baselines import sibling_model
    from lana.data import normalize
    from lana.finetune import kd_loss
    from lana.train import Recipe, evaluate, fit, model_norm, teacher_logits

    torch.manual_seed(seed)
    student = sibling_model("lcnet", width, len(test_set.classes))
    student_norm = model_norm(student)
    teacher = teacher.to(device).eval()

    def loss_fn(logits, labels, view):
        with torch.no_grad():
            # bug: the teacher gets the student's normalisation; fixed: its own
            target = teacher(normalize(view, **student_norm)) if bug else teacher_logits(teacher, view)
        return kd_loss(logits, target, labels)

    start = time.perf_counter()
    fit(student, train_set, replace(Recipe(), epochs=epochs, seed=seed), device=device, loss_fn=loss_fn,
        desc=f"sibling x{width} {'bug' if bug else 'fixed'} seed {seed}")  # fmt: skip
    return {"top1": evaluate(student, test_set, device=device), "train_s": time.perf_counter() - start}


def main(argv=None) -> int:
    from bench.workloads import Workload, prepare_teacher
    from lana.data import load_dataset
    from lana.dist import resolve_device
    from lana.teacher import load_teacher
    from lana.train import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/kdcheck")
    parser.add_argument("--width", type=float, default=1.27)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--widths", default=None, help="comma-separated widths (default: --width)")
    parser.add_argument("--seeds", type=int, default=1, help="sibling seeds per arm")
    parser.add_argument("--teacher", default=None, help="a trained teacher checkpoint (default: train or reuse one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = resolve_device(args.device)
    workload = Workload(name="W2-old", pretrained=True, device=str(device), model=OLD_W2["model"],
                        img_size=OLD_W2["img_size"], teacher_epochs=OLD_W2["teacher_epochs"], limit=OLD_W2["limit"])  # fmt: skip
    path = args.teacher or prepare_teacher(workload, Path(args.out))["path"]
    teacher = load_teacher(workload.model, 10, checkpoint=path).eval()
    train_set = load_dataset("fashion-mnist", "train", workload.img_size, limit=workload.limit)
    test_set = load_dataset("fashion-mnist", "test", workload.img_size)
    result = {"teacher_top1": evaluate(teacher, test_set, device=device), "width": args.width, "epochs": args.epochs,
              "device": str(device), "torch": torch.__version__, "teacher": str(path)}  # fmt: skip
    widths = [float(x) for x in args.widths.split(",")] if args.widths else [args.width]
    for width in widths:
        for bug in (True, False):
            arm = f"x{width} {'bug' if bug else 'fixed'}"
            result[arm] = [_train_sibling(teacher, train_set, test_set, width, args.epochs, bug, device, seed)
                           for seed in range(args.seeds)]  # fmt: skip
            log.info("%s: %s", arm, [r["top1"] for r in result[arm]])
    write_json(Path(args.out) / "kd_norm_check.json", result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
