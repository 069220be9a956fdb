"""Int8 against float, block by block, on a finished library (issue 10, item 3).

    python3 -m bench.int8_blocks runs/bench/W1/library.h5 --specs teacher,dw_k3,ir_k3_e3 --batch 64 --threads 1

For every layer and spec: the float block in shipped form (BN folded) and its int8 twin, quantized
as ``lana build --int8`` does (calibrated on the teacher's inputs at the layer, from the library's
own data set), timed interleaved on the teacher's inputs at the layer for a batch of held-out
(score split) images (median of ``repeats`` calls per round, then the median over rounds), and
the int8 output's relative RMS error against the float one on that batch. Prints a Markdown table. Nothing is written to the library.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

__all__ = ["compare"]


def _median_ms(module, batch, repeats: int) -> float:
    samples = []
    with torch.no_grad():
        module(batch)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            module(batch)
            samples.append(1e3 * (time.perf_counter() - start))
    return statistics.median(samples)


def compare(library, specs, batch: int = 64, rounds: int = 5, repeats: int = 10) -> list[dict]:
    """Per (layer, spec): float ms, int8 ms, their ratio and the int8 relative RMS error."""
    from lana.calibration import capture_inputs
    from lana.candidates import inference_form, int8_spec, quantization_error
    from lana.context import context_from_library
    from lana.data import load_dataset

    ctx = context_from_library(library)
    c = ctx.calibration  # the library's data set: held-out images come from its score split
    score = load_dataset(c.dataset, "score", c.img_size, seed=c.seed, limit=batch)
    held_out = capture_inputs(ctx.teacher, [layer.name for layer in ctx.layers], score.images, batch_size=batch)
    rows = []
    for li, layer in enumerate(ctx.layers):
        inputs = held_out[layer.name][0]  # the timing batch; the error is measured on it too
        for spec in specs:
            if spec not in ctx.specs[li]:
                continue
            fp32 = inference_form(ctx.load(li, spec)).eval()
            int8 = ctx.load(li, int8_spec(spec))
            times = {"fp32": [], "int8": []}
            for _ in range(rounds):  # interleaved, so that load drift hits both alike
                for name, module in (("fp32", fp32), ("int8", int8)):
                    times[name].append(_median_ms(module, inputs, repeats))
            error = quantization_error(fp32, int8, [inputs])
            fp, q = statistics.median(times["fp32"]), statistics.median(times["int8"])
            rows.append(
                {
                    "layer": layer.name,
                    "spec": spec,
                    "fp32_ms": fp,
                    "int8_ms": q,
                    "ratio": q / fp,
                    "relative_rms": error.relative_rms,
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.int8_blocks", description=__doc__.split("\n")[0])
    parser.add_argument("library")
    parser.add_argument("--specs", default="teacher,dw_k3,ir_k3_e3")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    rows = compare(args.library, [s.strip() for s in args.specs.split(",") if s.strip()], args.batch, args.rounds)
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.rounds} interleaved rounds\n")
    print("| layer | spec | fp32 ms | int8 ms | int8 / fp32 | int8 relative RMS error |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['spec']} | {r['fp32_ms']:.3f} | {r['int8_ms']:.3f} | {r['ratio']:.2f} | {r['relative_rms']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
