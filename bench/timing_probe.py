"""``python3 -m bench.timing_probe LIBRARY [--budget 0.5x] [--table cpu-b64] [--processes 3] [--threads 2]
[--pairs 40] [--passes 3] [--out FILE]``: how far one student's latency relative to its teacher moves on
this machine, within a process and between fresh ones.

lana meets a budget as measured, with each student timed against the teacher of the same pass
(:func:`lana.meters.measure_against_teacher`), and the benchmark credits a comparison only when lana
lands within [0.95, 1.0] of its budget. Both assume that the student-to-teacher ratio is a property of
the two models on this machine. This probe tests that: the ILP's plan at ``--budget`` is assembled from
the library, and in each of ``--processes`` fresh processes the student and the teacher (in shipped
form, on random input of the table's batch) alternate forward pass by forward pass, ``--pairs`` times
per pass, so that drift slower than one forward pass hits both alike. It reports each pass's medians
and median ratio, and the spread of the ratio within and between processes, with the minor page faults
per forward pass and the share of the CPU time spent in the kernel.

``--keep-memory``: each child first tells glibc's malloc to keep what it frees
(:func:`lana.meters.keep_freed_memory`, as lana's own meters do), so that a
forward pass reuses the memory of the last one instead of faulting fresh pages in. The probe times
with its own loop, so without the flag it shows the default malloc.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _child(library: str, budget: str, table: str, threads: int, pairs: int, passes: int,
           keep: bool = False) -> dict:  # fmt: skip
    import resource

    import torch

    from lana.candidates import inference_form
    from lana.context import context_from_library
    from lana.library import Library
    from lana.meters import keep_freed_memory, parse_table_name
    from lana.plan import SolveOptions, solve_library
    from lana.student import student_from_context

    kept = keep_freed_memory() if keep else False
    torch.set_num_threads(threads)
    ctx = context_from_library(Library(library))
    plan = solve_library(library, budget, SolveOptions(table=table))
    batch = parse_table_name(table)["batch_size"]
    student = inference_form(student_from_context(ctx, plan).eval())
    teacher = inference_form(ctx.teacher.eval())
    x = torch.randn(batch, *ctx.input_shape)  # what the table's meter times: (batch, *input_shape)

    def once(model) -> float:
        start = time.perf_counter()
        model(x)
        return (time.perf_counter() - start) * 1000

    out = []
    with torch.inference_mode():
        for model in (student, teacher, student, teacher):  # warm-up
            once(model)
        for _ in range(passes):
            before = resource.getrusage(resource.RUSAGE_SELF)
            s, t = zip(*((once(student), once(teacher)) for _ in range(pairs)))
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            out.append({"student_ms": statistics.median(s), "teacher_ms": statistics.median(t),
                        "median_ratio": statistics.median(a / b for a, b in zip(s, t)),
                        "faults_per_pass": (after.ru_minflt - before.ru_minflt) / (2 * pairs),
                        "kernel_share": (after.ru_stime - before.ru_stime) / cpu if cpu else 0.0})  # fmt: skip
    return {"predicted_ms": plan.predicted_latency_ms, "budget_ms": plan.budget_ms, "threads": threads,
            "batch": batch, "keep_memory": kept, "passes": out}  # fmt: skip


def probe(library: str, budget: str = "0.5x", table: str = "cpu-b64", processes: int = 3, threads: int = 2,
          pairs: int = 40, passes: int = 3, keep: bool = False) -> dict:  # fmt: skip
    """Run the probe in ``processes`` fresh processes; the per-process records and the spreads."""
    from bench.provenance import commit, cpu_model

    runs = []
    load = os.getloadavg()
    for _ in range(processes):
        args = [sys.executable, "-m", "bench.timing_probe", library, "--child", "--budget", budget, "--table", table,
                "--threads", str(threads), "--pairs", str(pairs), "--passes", str(passes),
                *(["--keep-memory"] if keep else [])]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, check=True, timeout=1800)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ratios = [[p["median_ratio"] for p in r["passes"]] for r in runs]
    flat = [x for r in ratios for x in r]
    faults = [p["faults_per_pass"] for r in runs for p in r["passes"]]
    return {
        "library": library, "budget": budget, "table": table, "threads": threads, "pairs": pairs, "keep_memory": keep,
        "faults_per_pass": statistics.median(faults),
        "kernel_share": statistics.median(p["kernel_share"] for r in runs for p in r["passes"]),
        "cpu": cpu_model(), "commit": commit(), "load_average": [load, os.getloadavg()], "processes": runs,
        "ratio_min": min(flat), "ratio_max": max(flat), "ratio_spread": max(flat) / min(flat) - 1,
        "within_process_spread": max(max(r) / min(r) - 1 for r in ratios),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.timing_probe", description=__doc__.split("\n\n")[1])
    parser.add_argument("library")
    parser.add_argument("--budget", default="0.5x")
    parser.add_argument("--table", default="cpu-b64")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--keep-memory", action="store_true", help="malloc keeps what it frees (no mmap, no trim)")
    parser.add_argument("--out", default=None, help="JSON file (default: print)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not os.path.exists(args.library):
        parser.error(f"{args.library}: no such library (build one with `lana build`, or run the benchmark)")
    if args.child:
        print(json.dumps(_child(args.library, args.budget, args.table, args.threads, args.pairs, args.passes,
                                args.keep_memory)))  # fmt: skip
        return 0
    result = probe(args.library, args.budget, args.table, args.processes, args.threads, args.pairs, args.passes,
                   args.keep_memory)  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.out:
        from lana.files import write_text

        write_text(args.out, text + "\n")
    print(f"{result['cpu']}, {args.threads} thread(s): student / teacher {result['ratio_min']:.3f} .. "
          f"{result['ratio_max']:.3f} ({result['ratio_spread']:.1%} apart; {result['within_process_spread']:.1%} "
          f"within one process at most); {result['faults_per_pass']:.0f} page faults per forward pass, "
          f"{result['kernel_share']:.0%} of the CPU time in the kernel")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
