"""``python3 -m bench.uniform_latency LIBRARY [--budgets 40.4ms,57.3ms] [--widths w0.25,w0.375,w0.5,w0.75]
[--table cpu-b64] [--rounds 7] [--passes 2] [--out FILE]``: does the library's additive latency table
charge uniform slim plans differently from the ILP's plans?

Each budget's ILP plan and each uniform width (every layer with ``slim_wX`` cut to X, the teacher elsewhere)
are assembled from the library and timed whole, interleaved with the teacher, ``--passes`` times in one
process. For each model it reports the predicted latency over the teacher's predicted one and the measured
latency over the teacher's in the same pass: where the table is unbiased the two ratios agree for every
kind of plan. Issue 26: at W2's 0.5x the bench's uniform slim measured 1.08x lana's student, where the table
put a uniform plan of its width at about 1.21x.
"""

from __future__ import annotations

import argparse
import os
import statistics


def run(library: str, budgets: list[str], widths: list[str], table: str, rounds: int, passes: int) -> dict:
    from bench.provenance import commit, cpu_model
    from lana.context import context_from_library
    from lana.library import Library
    from lana.meters import measure_latency
    from lana.plan import SolveOptions, solve_library
    from lana.problem import TEACHER, load_problem
    from lana.select import plan_of
    from lana.student import student_from_context

    problem = load_problem(library, table=table)
    teacher_choice = tuple(specs.index(TEACHER) for specs in problem.specs)
    teacher_pred = problem.predicted_latency_ms(teacher_choice)
    plans = {f"ilp@{b}": solve_library(library, b, SolveOptions(table=table)) for b in budgets}
    for width in widths:
        spec = f"slim_{width}"
        choice = tuple(s.index(spec) if spec in s else s.index(TEACHER) for s in problem.specs)
        plans[f"uniform-{width}"] = plan_of(problem, choice, teacher_pred, f"uniform-{width}")
    ctx = context_from_library(Library(library))
    models = {name: student_from_context(ctx, plan).eval() for name, plan in plans.items()}
    load = os.getloadavg()
    measured = {name: [] for name in plans}
    for _ in range(passes):
        timing = measure_latency({**models, "teacher": ctx.teacher.eval()}, ctx.input_shape, table, rounds=rounds)
        now = timing["teacher"]["median_ms"]
        for name in plans:
            measured[name].append(timing[name]["median_ms"] / now)
    rows = {
        name: {"predicted_ms": plan.predicted_latency_ms, "predicted_ratio": plan.predicted_latency_ms / teacher_pred,
               "measured_ratio": statistics.median(measured[name]), "measured_ratios": measured[name],
               "measured_over_predicted": statistics.median(measured[name]) / (plan.predicted_latency_ms / teacher_pred)}
        for name, plan in plans.items()
    }  # fmt: skip
    return {"library": library, "table": table, "rounds": rounds, "passes": passes, "teacher_predicted_ms": teacher_pred,
            "cpu": cpu_model(), "commit": commit(), "load_average": [load, os.getloadavg()], "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.uniform_latency", description=__doc__.split("\n\n")[1])
    parser.add_argument("library")
    parser.add_argument("--budgets", default="40.4ms,57.3ms")
    parser.add_argument("--widths", default="w0.25,w0.375,w0.5,w0.75")
    parser.add_argument("--table", default="cpu-b64")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    result = run(args.library, args.budgets.split(","), args.widths.split(","), args.table, args.rounds, args.passes)
    for name, row in result["rows"].items():
        print(f"{name:16s} predicted {row['predicted_ratio']:.3f} measured {row['measured_ratio']:.3f} "
              f"({', '.join(f'{r:.3f}' for r in row['measured_ratios'])}) measured/predicted "
              f"{row['measured_over_predicted']:.3f}")  # fmt: skip
    print(f"cpu {result['cpu']}, load average {result['load_average']}")
    if args.out:
        from lana.files import write_json

        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
