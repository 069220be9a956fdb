"""How far is ``fixed_ms + sum of per-layer latencies`` from the real end-to-end latency?

Builds latency tables for a timm teacher in several ways (the latency-model variants), then times
the teacher and random students end to end (interleaved, medians) and prints the % error of each
variant's predictions, at each batch size, plain and against the teacher re-timed in the same check
(what an ``x`` budget depends on: free of the machine's drift between table and check). The students
are measured once and shared by all variants, so the variants are compared on the same ground truth.

Variants:
    block_sum   each block timed alone; the fixed part (stem, head) timed alone with every
                block replaced by a free stub: the plain sum of parts (torch only: ONNX
                Runtime would fold the stub's constant into the head).
    isolated    each block timed alone, the teacher and 10 students whole; the whole-student fit
                (``measure_table(method="isolated")``, the ONNX Runtime way).
    isolated_unfitted
                isolated without the fit: fixed = teacher end to end - its blocks alone.
    in_network  each block timed inside random students (``measure_table`` default for torch);
                fixed part, a factor on the blocks and a weight term fitted on students timed
                whole without timers (random ones and ones of light or heavy candidates).
    in_network_scale
                the blocks as timed, fixed = forward - blocks call by call, every number times
                the median (forward with timers / prediction) of the students (the default
                before the whole-student fit).
    in_network_unscaled
                in_network_scale without that per-table factor.
    in_network_anchored
                in_network_unscaled with fixed = teacher end to end - its blocks.

Modes: sequential (default) measures each table, then the check, as ``lana build`` and
``lana latency --check`` do; on a shared machine its error includes how far the machine's load
drifted in between (the "teacher drift" column). ``--paired`` alternates one round of every
table with one round of the check, so both see the same drift and the error is the model's.

Example (the issue-5 benchmark):
    python3 bench/latency_additivity.py --model resnet18 --img-size 32 --batch-sizes 1 64
    python3 bench/latency_additivity.py --batch-sizes 1 64 --paired
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import time

import numpy as np
import timm
import torch
from torch import nn

from lana.candidates import build_candidate, space_for
from lana.latency import LatencyTable, _build_candidates, candidate_weights_mb, make_meter, measure_table, predict_ms
from lana.latency_check import check_latency, errors_vs_teacher, random_choices, teacher_choices
from lana.layers import find_layers, replace_layer

VARIANTS = ("block_sum", "isolated", "in_network")


class _ShapeStub(nn.Module):
    """Stands in for a block at ~zero cost: returns a fixed tensor of the block's output shape."""

    def __init__(self, out_shape):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self._out = None

    def forward(self, x):
        shape = (x.shape[0], *self.out_shape)
        if self._out is None or self._out.shape != shape or self._out.device != x.device:
            self._out = torch.randn(shape, device=x.device)
        return self._out


def block_sum_table(teacher, layers, specs, build, meter, input_shape, rounds) -> LatencyTable:
    """The plain sum of parts: blocks alone, plus the network with free stubs for the blocks."""
    table = measure_table(teacher, layers, specs, build, meter, "block_sum", progress=False,
                          input_shape=input_shape, rounds=rounds, method="isolated", correction="scale")  # fmt: skip
    stubbed = copy.deepcopy(teacher)
    for layer in layers:
        replace_layer(stubbed, layer.name, _ShapeStub(layer.out_shape))
    fixed = meter(stubbed, input_shape)
    return dataclasses.replace(table, fixed_ms=fixed.median_ms)


def measure_variants(
    variants, teacher, layers, specs, build, meter, input_shape, rounds, max_rounds, seed, log
) -> dict[str, LatencyTable]:
    """One table per variant (plus the two derived from in_network)."""
    tables = {}
    for variant in variants:
        start = time.perf_counter()
        if variant == "block_sum":
            table = block_sum_table(teacher, layers, specs, build, meter, input_shape, rounds)
        else:
            table = measure_table(teacher, layers, specs, build, meter, variant, progress=False,
                                  input_shape=input_shape, rounds=rounds, max_rounds=max_rounds,
                                  method=variant, seed=seed)  # fmt: skip
        tables[variant] = table
        keys = ("whole_fit", "scale", "students_max_error_pct", "rounds_run", "max_round_load", "loadavg")
        log(f"[b{meter.batch_size}] {variant}: table in {time.perf_counter() - start:.1f} s, "
            f"fixed {table.fixed_ms:.3f} ms, teacher {table.teacher_ms:.3f} ms, "
            f"{ {k: table.fingerprint[k] for k in keys if k in table.fingerprint} }")  # fmt: skip
    if "in_network" in tables:  # three variants derived from the same timings
        tables.update(derived_in_network(tables["in_network"], teacher, layers, specs, build))
    if "isolated" in tables and "whole_fit" in tables["isolated"].fingerprint:  # the fit undone
        raw = derived_in_network(tables["isolated"], teacher, layers, specs, build)["in_network_unscaled"]
        tables["isolated_unfitted"] = raw
    return tables


def derived_in_network(table, teacher, layers, specs, build) -> dict[str, LatencyTable]:
    """From the default in-network table, the raw block medians with ``fixed`` = forward minus
    blocks (``in_network_unscaled``), those times the per-table scale (``in_network_scale``, the
    correction before the whole-student fit), and the raw blocks with ``fixed`` = teacher end to
    end minus its blocks (``in_network_anchored``)."""
    how = table.fingerprint
    raw, raw_fixed = table.latency_ms, how.get("raw_fixed_ms", table.fixed_ms)
    if "whole_fit" in how:  # undo the fit: raw = (number + shift - ms_per_mb x MB) / block factor
        fit = how["whole_fit"]
        mbytes = candidate_weights_mb(_build_candidates(teacher, layers, specs, build))
        shifts = fit.get("layer_shift_ms", [0.0] * len(raw))
        raw = [(row + shift - fit["ms_per_mb"] * mb) / fit["block_factor"]
               for row, mb, shift in zip(raw, mbytes, shifts)]  # fmt: skip
    elif "scale" in how:
        raw = [row / how["scale"] for row in raw]
    unscaled = dataclasses.replace(table, fixed_ms=raw_fixed, latency_ms=raw)
    teacher_blocks = predict_ms(unscaled, teacher_choices(unscaled)) - unscaled.fixed_ms
    scale = how.get("scale", 1.0)
    return {
        "in_network_scale": dataclasses.replace(
            unscaled, fixed_ms=raw_fixed * scale, latency_ms=[r * scale for r in raw]
        ),
        "in_network_unscaled": unscaled,
        "in_network_anchored": dataclasses.replace(unscaled, fixed_ms=table.teacher_ms - teacher_blocks),
    }


def student_plans(table, args, teacher, layers, specs, build) -> list[list[int]]:
    """``--students`` random students, then ``--light-students`` of light candidates."""
    from lana.latency import _sized_choices

    plans = random_choices(table, args.students, seed=args.seed)
    if args.light_students:
        mbytes = candidate_weights_mb(_build_candidates(teacher, layers, specs, build))
        rng = np.random.default_rng(args.seed + 1)
        plans += [_sized_choices(mbytes, rng, small=True) for _ in range(args.light_students)]
    return plans


def median_table(tables: list[LatencyTable]) -> LatencyTable:
    """Element-wise median of tables measured one round each."""
    return dataclasses.replace(
        tables[0],
        fixed_ms=float(np.median([t.fixed_ms for t in tables])),
        teacher_ms=float(np.median([t.teacher_ms for t in tables])),
        latency_ms=[np.median(rows, axis=0) for rows in zip(*(t.latency_ms for t in tables))],
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--students", type=int, default=10)
    parser.add_argument(
        "--light-students",
        type=int,
        default=5,
        help="more students of light candidates (each layer's lighter half by weight), reported apart: "
        "the fast plans a budget picks",
    )
    parser.add_argument("--space", default="tiny", help="space_for preset or patterns")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--paired",
        action="store_true",
        help="alternate one round of every table with one round of the check, --rounds times, "
        "so that both see the same drift of the machine",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    input_shape = (3, args.img_size, args.img_size)
    teacher = timm.create_model(args.model, pretrained=False, num_classes=10).eval()
    layers = find_layers(teacher, input_shape)
    specs = [space_for(layer, args.space, teacher_block=teacher.get_submodule(layer.name)) for layer in layers]
    built: dict = {}

    def build(index: int, spec: str) -> nn.Module:
        # built once and copied: weights do not change timing, construction time is not measured
        if (index, spec) not in built:
            block = teacher.get_submodule(layers[index].name)
            built[index, spec] = build_candidate(spec, layers[index], block).eval()
        return copy.deepcopy(built[index, spec])

    variants = [v for v in args.variants.split(",") if v]
    print(f"{args.model} {args.img_size}px, {len(layers)} layers, "
          f"{sum(map(len, specs))} candidates ({args.space}), backend {args.backend}, "
          f"threads {args.threads or 'all'}, {args.students} students, "
          f"{'paired' if args.paired else 'sequential'}")  # fmt: skip
    results = []
    for batch_size in args.batch_sizes:
        common = (teacher, layers, specs, build)
        if args.paired:  # one round of each table, then one of the check, --rounds times
            meter = make_meter(args.device, args.backend, batch_size, args.threads,
                               repeats=math.ceil(args.repeats / args.rounds))  # fmt: skip
            rounds, measured, plans = [], [], None
            for r in range(args.rounds):
                rounds.append(measure_variants(variants, *common, meter, input_shape, 1, 1, r,
                                               log=lambda line: None))  # fmt: skip
                reference = rounds[0][variants[0]]  # any table: the check reads its specs
                plans = plans or student_plans(reference, args, teacher, layers, specs, build)
                report = check_latency(teacher, reference, layers, plans, build, meter,
                                       input_shape=input_shape, rounds=1, max_rounds=1)  # fmt: skip
                measured.append([row.measured_ms for row in report.rows])
            tables = {v: median_table([per_round[v] for per_round in rounds]) for v in rounds[0]}
            measured = np.median(measured, axis=0)
            choices = [row.choices for row in report.rows]
        else:  # as a user runs it: the table, then the check
            meter = make_meter(args.device, args.backend, batch_size, args.threads, repeats=args.repeats)
            tables = measure_variants(variants, *common, meter, input_shape, args.rounds, None,
                                      args.seed, log=print)  # fmt: skip
            reference = next(iter(tables.values()))
            plans = student_plans(reference, args, teacher, layers, specs, build)
            start = time.perf_counter()
            report = check_latency(teacher, reference, layers, plans, build, meter,
                                   input_shape=input_shape, rounds=args.rounds)  # fmt: skip
            print(f"[b{batch_size}] check in {time.perf_counter() - start:.1f} s, "
                  f"{report.rounds_run} rounds, load {os.getloadavg()[0]:.2f}")  # fmt: skip
            print(report.to_text())
            measured = np.array([row.measured_ms for row in report.rows])
            choices = [row.choices for row in report.rows]
        for variant, table in tables.items():
            predicted = np.array([predict_ms(table, c) for c in choices])
            signed = 100 * (predicted - measured) / measured
            # the teacher re-timed in the check vs in the table: the machine's drift in between
            drift = 100 * (measured[0] / table.teacher_ms - 1)
            relative = np.abs(errors_vs_teacher(predicted, measured))  # choices[0] is the teacher
            random_part = slice(0, 1 + args.students)  # the teacher and the random students
            light = np.abs(signed[1 + args.students :])
            results.append((variant, batch_size, signed[random_part], drift, relative[: args.students],
                            relative[args.students :], light))  # fmt: skip

    print("\n| variant | batch | median abs error % | max abs error % | mean signed error % "
          "| teacher drift % | vs teacher: median / max % | light students: median / max % "
          "| light vs teacher: median / max % |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def pair(values) -> str:
        return f"{np.median(values):.1f} / {np.max(values):.1f}" if len(values) else "-"

    for variant, batch_size, signed, drift, relative, light_relative, light in results:
        error = np.abs(signed)
        print(
            f"| {variant} | {batch_size} | {np.median(error):.1f} | {error.max():.1f} "
            f"| {signed.mean():+.1f} | {drift:+.1f} | {pair(relative)} | {pair(light)} | {pair(light_relative)} |"
        )


if __name__ == "__main__":
    main()
