"""``lana solve`` and ``lana pareto``: parse, call `lana.plan`, print. No torch is imported.

Exit codes (``lana.cli.options.EXIT_CODES``): 0 done; 1 bad input (unknown table, pattern
matching nothing, unreadable file); 2 usage (argparse); 4 infeasible budget, with the minimum
achievable latency and the binding constraint on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lana.cli.options import EXIT_BAD_INPUT, EXIT_INFEASIBLE, subcommand

__all__ = ["add_parsers", "run_solve", "run_pareto", "parse_budgets", "solve_options", "main"]

_SOLVERS = ("highs", "cbc", "pulp-highs", "cpsat")
_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9}


def add_parsers(subparsers) -> None:
    """Adds ``solve`` and ``pareto`` to the ``lana`` subparsers."""
    add_solve_parser(subparsers)
    add_pareto_parser(subparsers)


def add_solve_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``lana solve`` to an argparse subparsers object; sets ``func`` to `run_solve`."""
    parser = subcommand(
        subparsers,
        "solve",
        help="the best plan of a library under a latency budget",
        description="Pick one candidate per layer: least summed score under the latency budget "
        "(an integer linear program, solved exactly).",
    )
    parser.add_argument("library", help="the library .h5 file")
    parser.add_argument(
        "--budget",
        required=True,
        help="0.5x: a factor of the teacher's predicted latency on the table (fixed part + its blocks, the sum "
        "the ILP compares plans with; lana info shows it beside the teacher measured whole), or 3.2ms",
    )
    _add_common(parser)
    parser.add_argument(
        "--diverse", type=int, default=1, metavar="K", help="the K best plans that differ pairwise in >= D layers"
    )
    parser.add_argument("--min-diff", type=int, default=1, metavar="D", help="see --diverse")
    parser.add_argument(
        "--out", metavar="PLAN.json", help="write the plan JSON (with --diverse K: PLAN_1.json .. PLAN_K.json)"
    )
    parser.set_defaults(func=run_solve)
    return parser


def add_pareto_parser(subparsers) -> argparse.ArgumentParser:
    """Adds ``lana pareto`` to an argparse subparsers object; sets ``func`` to `run_pareto`."""
    parser = subcommand(
        subparsers,
        "pareto",
        help="the predicted accuracy-latency front of a library",
        description="Solve at many budgets: a table of predicted latency and drop, and a plot.",
    )
    parser.add_argument("library", help="the library .h5 file")
    parser.add_argument(
        "--budgets",
        required=True,
        help="START:STOP:STEP as factors of the teacher's latency (0.2:1.0:0.05), "
        "in ms with a unit (2ms:5ms:0.5ms), or a list (0.3x,0.5x,4ms)",
    )
    _add_common(parser)
    parser.add_argument("--plot", metavar="PNG", help="draw the front into this PNG")
    parser.set_defaults(func=run_pareto)
    return parser


def _add_common(parser) -> None:
    parser.add_argument("--table", help="latency table of the budget (default: the first)")
    parser.add_argument(
        "--score", help="score kind: top1_drop, ce_delta or kl (default: the build's default_score, else kl)"
    )
    parser.add_argument(
        "--max-params", type=_count, metavar="N", help="limit on the total params of the replaceable layers (11.2M)"
    )
    parser.add_argument("--max-macs", type=_count, metavar="N", help="limit on their MACs (1.8G)")
    parser.add_argument(
        "--extra-budget",
        action="append",
        default=[],
        metavar="TABLE=BUDGET",
        help="a budget on another table, met at the same time (gpu-b64=0.6x; repeatable)",
    )
    parser.add_argument(
        "--solver",
        choices=_SOLVERS,
        default="highs",
        help="highs (default), cbc or pulp-highs (PuLP), cpsat (OR-Tools)",
    )
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="LAYERS",
        help="layers whose name matches this pattern keep the teacher (layer4.*; repeatable)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="SPECS",
        help="forbid candidates whose spec matches (ir_*_se), or only in some "
        "layers: LAYERS:SPECS (layer1.*:dw_*); repeatable",
    )
    parser.add_argument("--allow-incomplete", action="store_true", help="solve a library whose build has not finished")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the plan JSON (schema: lana/plan.py) instead of a table; a "
        "list of plans for lana pareto and for --diverse K > 1",
    )


def run_solve(args) -> int:
    """``lana solve``: prints the plan(s); returns the exit code."""
    from lana.plan import solve_diverse, solve_library

    def call():
        if args.diverse == 1:
            return [solve_library(args.library, args.budget, solve_options(args))]
        return solve_diverse(args.library, args.budget, args.diverse, args.min_diff, solve_options(args))

    plans = _guarded("solve", call)
    if isinstance(plans, int):
        return plans
    if args.out:
        out = Path(args.out)
        paths = (
            [out]
            if len(plans) == 1
            else [out.with_name(f"{out.stem}_{rank}{out.suffix}") for rank in range(1, len(plans) + 1)]
        )
        for plan, path in zip(plans, paths):
            plan.save(path)
    if args.json:
        data = [plan.to_dict() for plan in plans]
        print(json.dumps(data[0] if args.diverse == 1 else data, indent=2))
        return 0
    for rank, plan in enumerate(plans, 1):
        if args.diverse > 1:
            differ = sum(a != b for a, b in zip(plan.choices, plans[0].choices))
            print(
                f"== plan {rank} of {len(plans)}"
                + (f" (differs from plan 1 in {differ} layers)" if rank > 1 else " (the best)")
            )
        _print_plan(plan)
    if len(plans) < args.diverse:
        print(f"only {len(plans)} plans differ pairwise in >= {args.min_diff} layers")
    if args.out:
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def run_pareto(args) -> int:
    """``lana pareto``: prints the front and draws it; returns the exit code."""
    from lana.plan import pareto, plot_pareto

    try:
        budgets = parse_budgets(args.budgets)
    except ValueError as exc:
        print(f"lana pareto: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    plans = _guarded("pareto", lambda: pareto(args.library, budgets, solve_options(args)))
    if isinstance(plans, int):
        return plans
    if args.plot:
        plot_pareto(plans, args.plot)
    if args.json:
        print(json.dumps([plan.to_dict() for plan in plans], indent=2))
        return 0
    first = plans[0]
    teacher = first.config.get("teacher_ms", {}).get(first.table)
    print(
        f"{first.model} on {first.table}, score {first.score}, solver {first.solver}"
        + (f", teacher {teacher:.4f} ms" if teacher else "")
    )
    print(f"{'budget':>10} {'budget_ms':>10} {'latency_ms':>11} {'drop':>12} {'replaced':>9} {'solve_s':>8}")
    for plan in plans:
        replaced = sum(spec != "teacher" for _, spec in plan.choices)
        print(
            f"{plan.config['budget']:>10} {plan.budget_ms:>10.4f} "
            f"{plan.predicted_latency_ms:>11.4f} {plan.predicted_drop:>12.6g} "
            f"{replaced:>5}/{len(plan.choices):<3} {plan.solve_time_s:>8.3f}"
        )
    skipped = [b for b in budgets if b not in {p.config["budget"] for p in plans}]
    if skipped:
        print(f"infeasible, skipped: {', '.join(skipped)}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def parse_budgets(text: str) -> list[str]:
    """``START:STOP:STEP`` (both ends included; factors of the teacher's latency, or ms when the
    numbers carry ``ms``) or a comma list, into budget strings for `lana.problem.parse_budget`."""
    if ":" not in text:
        return [item.strip() for item in text.split(",") if item.strip()]
    parts = [part.strip().lower() for part in text.split(":")]
    unit = "ms" if any(part.endswith("ms") for part in parts) else "x"
    try:
        start, stop, step = (float(part.removesuffix("ms").removesuffix("x")) for part in parts)
    except ValueError:
        raise ValueError(f"--budgets {text!r}: expected START:STOP:STEP such as 0.2:1.0:0.05") from None
    if step <= 0 or stop < start:
        raise ValueError(f"--budgets {text!r}: need STEP > 0 and STOP >= START")
    count = math.floor((stop - start) / step + 1e-9) + 1
    if count > 1000:
        raise ValueError(f"--budgets {text!r} gives {count} budgets: at most 1000")
    return [f"{round(start + i * step, 10):g}{unit}" for i in range(count)]


def solve_options(args):
    """The :class:`lana.plan.SolveOptions` that ``lana solve``/``pareto``'s options describe."""
    from lana.plan import SolveOptions

    extra = {}
    for item in args.extra_budget:
        table, sep, budget = item.partition("=")
        if not sep:
            raise ValueError(f"--extra-budget {item!r}: expected TABLE=BUDGET (gpu-b64=0.6x)")
        extra[table.strip()] = budget.strip()
    return SolveOptions(
        table=args.table, score=args.score, solver=args.solver, max_params=args.max_params, max_macs=args.max_macs,
        extra_budgets=extra, keep=tuple(args.keep), exclude=tuple(args.exclude), allow_incomplete=args.allow_incomplete,
    )  # fmt: skip


def _guarded(command: str, call):
    """Runs ``call``; maps an infeasible budget to exit code 4, bad input to 1."""
    from lana.solver import InfeasibleBudget, SolverError

    try:
        return call()
    except InfeasibleBudget as exc:
        print(f"lana {command}: infeasible: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
    except (ValueError, KeyError, OSError, SolverError) as exc:
        print(f"lana {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _print_plan(plan) -> None:
    teacher = plan.config.get("teacher_ms", {}).get(plan.table)
    measured = plan.config.get("teacher_measured_ms", {}).get(plan.table)
    relative = f" ({plan.budget_ms / teacher:.3f}x of the teacher's predicted {teacher:.4f} ms" if teacher else ""
    if teacher and measured:
        relative += f"; the teacher measured whole {measured:.4f} ms when the table was made"
    print(f"{plan.model} on {plan.table}, score {plan.score}, solver {plan.solver}")
    print(f"budget {plan.budget_ms:.4f} ms{relative + ')' if relative else ''}")
    width = max([len("layer")] + [len(layer) for layer, _ in plan.choices])
    spec_width = max([len("spec")] + [len(spec) for _, spec in plan.choices])
    print(f"{'layer':<{width}}  {'spec':<{spec_width}}  {'latency_ms':>10}  {'score':>12}")
    for (layer, spec), ms, score in zip(plan.choices, plan.layer_latency_ms, plan.layer_score):
        print(f"{layer:<{width}}  {spec:<{spec_width}}  {ms:>10.4f}  {score:>12.6g}")
    ratio = f" ({plan.predicted_latency_ms / teacher:.3f}x teacher)" if teacher else ""
    print(
        f"predicted latency {plan.predicted_latency_ms:.4f} ms{ratio}, "
        f"predicted drop {plan.predicted_drop:.6g} ({plan.score})"
    )
    others = [f"{t} {ms:.4f} ms" for t, ms in plan.latency_ms.items() if t != plan.table]
    print(
        f"params {_human(plan.params)}, MACs {_human(plan.macs)}"
        + (f"; on other tables: {', '.join(others)}" if others else "")
    )
    print(f"solve time {plan.solve_time_s:.3f} s")


def _count(text: str) -> int:
    """argparse type: 11200000, 11.2M, 1.8G, 500k."""
    text = text.strip().lower()
    factor = _SUFFIXES.get(text[-1:], 1)
    try:
        value = float(text[:-1] if factor != 1 else text) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count such as 11200000 or 11.2M") from None
    return int(value)


def _human(count) -> str:
    if count is None:
        return "?"
    for suffix, factor in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(count) >= factor:
            return f"{count / factor:.3g}{suffix}"
    return str(count)


def main(argv=None) -> int:
    """``python -m lana.cli.solve solve|pareto ...`` (the same commands as ``lana``)."""
    parser = argparse.ArgumentParser(prog="lana")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_solve_parser(subparsers)
    add_pareto_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
