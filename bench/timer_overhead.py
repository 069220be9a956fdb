"""What lana's in-network block timers cost: a timm model timed plain and with every replaceable
layer wrapped in a ``_BlockTimer``, interleaved, batch 1 (the cost lands in forward-minus-blocks,
the fixed part the timers see; the whole-student fit in ``lana.latency`` removes it).

Example (~1 min on 2 cores):
    python3 bench/timer_overhead.py --model resnet18 --img-size 32 --threads 2 1
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import timm
import torch

from lana.latency import _BlockTimer
from lana.layers import find_layers, replace_layer


def _median_ms(model, x, calls: int) -> tuple[float, np.ndarray]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        model(x)
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples)), np.array(samples)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        plain = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
        layers = find_layers(plain, (3, args.img_size, args.img_size))
        timed, timers = copy.deepcopy(plain), []
        for layer in layers:
            timers.append(_BlockTimer(copy.deepcopy(plain.get_submodule(layer.name))))
            replace_layer(timed, layer.name, timers[-1])
        x = torch.randn(1, 3, args.img_size, args.img_size)
        medians = {"plain": [], "timed": []}
        with torch.inference_mode():
            for _ in range(5):
                plain(x), timed(x)
            for r in range(args.rounds):  # alternate which goes first
                for name in ("plain", "timed") if r % 2 else ("timed", "plain"):
                    medians[name].append(_median_ms(plain if name == "plain" else timed, x, 20)[0])
                    for timer in timers:
                        timer.take(0)
        p, t = np.median(medians["plain"]), np.median(medians["timed"])
        print(f"{args.model} {args.img_size}px b1 t{threads}: plain {p:.4f} ms, with {len(layers)} timers {t:.4f} ms: "
              f"{1e3 * (t - p):.1f} us ({1e3 * (t - p) / len(layers):.1f} us a timer, {100 * (t / p - 1):.1f}%); "
              f"load {os.getloadavg()[0]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
