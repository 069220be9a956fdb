"""Issue 27 item 7: a streamed build's memory does not grow with the folder, and how fast it reads.

Writes synthetic JPEG folders (``bench/make_folders.py``) of each size asked, then runs the same
``lana build`` on each in a subprocess (224 px by default, ``--max-steps`` distillation steps,
scores on ``--score-images``, no latency) and reports its peak RSS (the child's ``ru_maxrss``),
the distillation's images/s and the stage times, with the CPU and load average::

    python3 -m bench.stream_scale --sizes 5000,50000 --steps 200 --out runs/stream-scale

Memory should be flat: the listing grows with the folder (a few hundred bytes an image), the
decoded batches do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _build(folder: Path, out: Path, args) -> dict:
    library = out / f"{folder.name}.h5"
    images = int(folder.name.split("-")[-1])
    # enough epochs that --max-steps, not the end of the first epoch, stops a small folder's build
    # (5,000 images hold about 130 steps of 32 once val/ and the score split are set apart)
    epochs = max(1.0, args.steps * args.batch_size / (0.8 * images - args.score_images))
    command = [sys.executable, "-m", "lana", "build", "--model", args.model, "--dataset", str(folder),
               "--img-size", str(args.img_size), "--space", args.space, "--max-steps", str(args.steps),
               "--epochs", f"{epochs:.3f}",
               "--batch-size", str(args.batch_size), "--score-images", str(args.score_images), "--device",
               args.device, "--skip-latency", "--no-teacher-finetune", "--out", str(library), "--restart"]  # fmt: skip
    log = out / f"{folder.name}.log"
    start = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        _pid, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    peak_kib = usage.ru_maxrss
    from lana.library import Library

    stages = Library(library).config.get("stages_s", {})
    return {"images": images, "epochs": epochs, "peak_rss_mb": peak_kib / 1024, "wall_s": wall,
            "stages_s": stages, "distill_images_per_s": args.steps * args.batch_size / stages["distill"]}  # fmt: skip


def main(argv=None) -> dict:
    from bench.make_folders import make_folders
    from bench.provenance import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000,50000", help="images per folder, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="distillation steps of each build")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--model", default="resnet18", help="a teacher from scratch (a random head: no fine-tuning)")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--score-images", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/stream-scale")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        folder = out / f"folder-{size}"
        if not (folder / "train").is_dir():
            make_folders(folder, size, 10, 256, 0.1, 0, max(1, os.cpu_count() or 1), False)
        rows.append(_build(folder, out, args))
        print(json.dumps(rows[-1]), flush=True)
    result = {"rows": rows, "cpu": cpu_model(), "load_average": os.getloadavg(), "settings": vars(args)}
    (out / "stream_scale.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
