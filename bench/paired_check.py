"""``python3 -m bench.paired_check LIBRARY STUDENT_DIR [--table cpu-b64] [--passes 4] [--out FILE]``:
how far a saved student's latency relative to its teacher moves from pass to pass, timed as the
final pass and the closed loop timed it before (interleaved rounds, the ratio of two medians:
:func:`lana.meters.measure_against_teacher`) and paired (:func:`lana.paired.time_relative`).

The passes alternate between the two ways, so that both see the same minutes of the machine. It
reports each pass's ratio and seconds, and each way's range over the passes; a way whose range is
wider than the budget band (5%) cannot tell whether a student is inside it.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

__all__ = ["main"]


def main(argv=None) -> dict:
    from bench.provenance import commit, cpu_model
    from lana.context import load_library_teacher
    from lana.files import write_json
    from lana.library import Library
    from lana.meters import measure_against_teacher
    from lana.paired import time_relative
    from lana.student import load_student

    parser = argparse.ArgumentParser(prog="python3 -m bench.paired_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("library")
    parser.add_argument("student", help="a folder written by lana.student.save_student (student.json + weights)")
    parser.add_argument("--table", default="cpu-b64")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the medians' way")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    shape = tuple(Library(args.library).input_shape)
    teacher = load_library_teacher(args.library).eval()
    student = load_student(args.student).eval()
    start_load = os.getloadavg()
    passes = []
    for i in range(args.passes):
        t0 = time.perf_counter()
        timing = measure_against_teacher({"student": student}, teacher, shape, args.table, None, rounds=args.rounds)
        medians = timing["student"]["median_ms"] / timing["student"]["teacher_ms"]
        t1 = time.perf_counter()
        paired = time_relative({"student": student}, teacher, shape, args.table)["student"]
        t2 = time.perf_counter()
        passes.append({"medians": medians, "medians_s": t1 - t0, "paired": paired.as_dict(), "paired_s": t2 - t1})
        print(f"pass {i}: medians {medians:.4f} ({t1 - t0:.0f} s), paired {paired.ratio:.4f} "
              f"[{paired.low:.4f}, {paired.high:.4f}] {paired.blocks} blocks ({t2 - t1:.0f} s)", flush=True)  # fmt: skip
    summary = {}
    for way, values in (
        ("medians", [p["medians"] for p in passes]),
        ("paired", [p["paired"]["ratio"] for p in passes]),
    ):
        summary[way] = {
            "min": min(values),
            "max": max(values),
            "range_share": (max(values) - min(values)) / min(values),
        }
        print(f"{way}: {min(values):.4f} .. {max(values):.4f}, range {100 * summary[way]['range_share']:.1f}%")
    out = {"library": args.library, "student": args.student, "table": args.table, "rounds": args.rounds,
           "passes": passes, "summary": summary, "cpu": cpu_model(), "commit": commit(),
           "load_average": {"start": list(start_load), "end": list(os.getloadavg())}}  # fmt: skip
    if args.out:
        write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
