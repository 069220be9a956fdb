"""The benchmark harness of issue 8: lana against what users would do instead, side by side.

``python3 -m bench`` (``make bench``) runs every workload of :mod:`bench.workloads` and writes
``BENCHMARKS.md`` with plots; ``python3 -m bench --smoke`` runs the same code at tiny scale.

Per workload: the teacher and lana's library are built (or reused from ``OUT/<workload>/``); then,
at each budget (a factor of the teacher's latency measured now, on the budget's table):

1. **lana**: ``lana.accelerate.accelerate`` (solve, assemble, re-solve if measured over budget, KD
   fine-tuning): exactly what ``lana accelerate`` gives a user.
2. **random** / **greedy**: plans from the same library under the same predicted budget.
3. **prune** / **sibling**: Torch-Pruning and a smaller sibling, matched to the latency of lana's
   student as measured (:mod:`bench.baselines`): the competitors.
4. **uniform_slim**: the ablation of per-layer choice, every block cut to one width by lana's
   slim surgery with its least-squares start, the width matched to lana's student likewise.

Every student is fine-tuned with lana's KD recipe for the same epochs (the sibling, which starts
from random weights, gets the teacher's recipe plus KD). Last, all models of a workload are timed
interleaved on every table, so that their latencies come from one pass on one machine state.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

__all__ = ["rewrite_report", "run_bench", "run_workload"]

log = logging.getLogger(__name__)


class _NoPlan(Exception):
    """A heuristic found no plan under the budget."""


def _lana(run, budget: str, budget_ms: float) -> tuple[dict, object]:
    """``lana accelerate`` at ``budget_ms`` on the budget's table, from the cached library."""
    from bench.workloads import budget_table, build_config
    from lana.accelerate import AccelerateConfig, FinetuneConfig, accelerate
    from lana.plan import Plan, SolveOptions
    from lana.student import load_student, student_from_context

    w = run.w

    def make(folder: Path):
        config = AccelerateConfig(
            build=build_config(w, run.teacher_info["path"]),
            budget=f"{budget_ms:.6g}ms",
            solve=SolveOptions(table=budget_table(w, budget)),
            finetune=FinetuneConfig(epochs=w.finetune_epochs, max_steps=w.max_steps),
            library=run.library["path"],
            eval_limit=w.eval_limit,
            export=False,
        )
        report = accelerate(config, folder)
        plan = Plan.from_dict(report["student"]["plan"])
        before = run.evaluate(student_from_context(run.ctx, plan), limit=w.corr_images)
        run.points.append((plan.predicted_drop, before, "lana"))
        stages = report["stages_s"]
        row = {
            "method": "lana",
            "budget": budget,
            "budget_ms": budget_ms,
            "top1": report["student"]["top1"],
            "top1_before_ft": before,
            "predicted_drop": plan.predicted_drop,
            "predicted_ms": dict(plan.latency_ms),
            "library_budget_ms": plan.budget_ms,
            "solve_s": plan.solve_time_s,
            "solver": plan.solver,
            "search_s": stages["solve"] + stages["assemble"],
            "train_s": stages["finetune"],
            "resolve_rounds": report["resolve_rounds"],
            "plan": dict(plan.choices),
        }
        return row, load_student(folder)

    return run.cached(
        budget, "lana", make, lambda _row, folder: load_student(folder), depends={"budget_ms": round(budget_ms, 6)}
    )


def _library_plans(run, budget: str, lana: dict) -> None:
    """Best-of-N random and greedy plans under lana's (final) predicted budget, fine-tuned alike."""
    from bench.baselines import greedy_plan, plan_of, random_feasible_plans
    from bench.workloads import budget_table
    from lana.student import load_student, save_student, student_from_context

    w, budget_ms = run.w, lana["library_budget_ms"]
    problem = run.problem_on(budget_table(w, budget))

    def train(folder: Path, method: str, choice, seconds: float, extra: dict):
        plan = plan_of(problem, choice, budget_ms, method, seconds)
        model = student_from_context(run.ctx, plan)
        before = run.evaluate(model, limit=w.corr_images)
        if method == "greedy":  # random plans were all evaluated already
            run.points.append((plan.predicted_drop, before, method))
        train_s = run.finetune(model, w.finetune_epochs, f"{method} {budget}")
        save_student(model, plan, run.ctx, folder)
        return {
            "method": method,
            "budget": budget,
            "top1": run.evaluate(model),
            "top1_before_ft": before,
            "predicted_drop": plan.predicted_drop,
            "predicted_ms": dict(plan.latency_ms),
            "library_budget_ms": budget_ms,
            "search_s": seconds,
            "train_s": train_s,
            "plan": dict(plan.choices),
            **extra,
        }, model

    def make_random(folder: Path):
        start = time.perf_counter()
        choices = random_feasible_plans(problem, budget_ms, w.random_plans, seed=w.seed)
        seconds = time.perf_counter() - start
        if not choices:
            raise _NoPlan(f"no random plan meets {budget_ms:.3f} ms")
        for choice in choices:  # every plan's pre-fine-tune top-1: points of the score-accuracy correlation
            model = student_from_context(run.ctx, plan_of(problem, choice, budget_ms, "random"))
            run.points.append((problem.predicted_drop(choice), run.evaluate(model, limit=w.corr_images), "random"))
        return train(folder, "random", min(choices, key=problem.predicted_drop), seconds, {"plans_drawn": len(choices)})

    def make_greedy(folder: Path):
        start = time.perf_counter()
        choice = greedy_plan(problem, budget_ms)
        if choice is None:
            raise _NoPlan(f"no greedy plan meets {budget_ms:.3f} ms")
        return train(folder, "greedy", choice, time.perf_counter() - start, {})

    for method, make in (("random", make_random), ("greedy", make_greedy)):
        try:
            run.cached(budget, method, make, lambda _row, folder: load_student(folder), depends={"lana": lana["plan"]})
        except _NoPlan as error:  # lana met the budget, so this is rare: the row is left out, loudly
            log.warning("%s %s: %s", budget, method, error)


def _search(w) -> dict:
    """The latency bisection's settings of workload ``w`` (:func:`bench.baselines.match_latency`)."""
    return {"tolerance": w.match_tolerance, "iters": w.search_iters, "rounds": w.search_rounds, "threads": w.threads}


def _rebuild(build):
    """``rebuild(row, folder)`` for run.cached: the same knob rebuilds the same architecture (pruning
    by magnitude, slimming by importance are deterministic), then the saved weights load."""
    from lana.teacher import load_state_file

    def load(row: dict, folder: Path):
        model = build(row["match"]["knob"])
        model.load_state_dict(load_state_file(folder / "model.safetensors"))
        return model

    return load


def _matched_baselines(run, budget: str, lana: dict, target) -> None:
    """Torch-Pruning and the sibling, each bisected to the measured latency of lana's student."""
    from bench.baselines import match_latency, prune_model, sibling_model
    from bench.workloads import budget_table
    from lana.teacher import save_state
    from lana.train import Recipe

    w, classes, search = run.w, len(run.test_set.classes), _search(run.w)
    table = budget_table(w, budget)
    build = {
        "prune": lambda ratio: prune_model(run.teacher, ratio, w.input_shape),
        "sibling": lambda width: sibling_model(w.sibling, width, classes),
    }

    def make_pruned(folder: Path):
        model, match = match_latency(build["prune"], target, w.input_shape, table, 0.0, 0.9, increasing=False, **search)
        before = run.evaluate(model, limit=w.corr_images)
        train_s = run.finetune(model, w.finetune_epochs, f"prune {budget}")
        save_state(model, folder / "model.safetensors")
        return {
            "method": "prune",
            "budget": budget,
            "top1": run.evaluate(model),
            "top1_before_ft": before,
            "search_s": match.seconds,
            "train_s": train_s,
            "match": asdict(match),
        }, model

    def make_sibling(folder: Path):
        high = 1.0 if w.sibling == w.model else 3.0  # a narrower teacher stops at the teacher's width
        model, match = match_latency(
            build["sibling"], target, w.input_shape, table, 0.05, high, increasing=True, **search
        )
        # from random weights: the teacher's own recipe (SGD 0.1, warm-up + cosine) with KD as the loss
        train_s = run.finetune(model, w.sibling_epochs, f"sibling {budget}", recipe=Recipe())
        save_state(model, folder / "model.safetensors")
        return {
            "method": "sibling",
            "budget": budget,
            "top1": run.evaluate(model),
            "top1_before_ft": None,
            "search_s": match.seconds,
            "train_s": train_s,
            "match": asdict(match),
            "sibling": f"{w.sibling} x{match.knob:.3f}",
        }, model

    for method, make in (("prune", make_pruned), ("sibling", make_sibling)):
        run.cached(budget, method, make, _rebuild(build[method]), depends={"lana": lana["plan"]})


def _uniform_slim(run, budget: str, lana: dict, target) -> None:
    """Every block cut to one slim width, bisected to the measured latency of lana's student,
    refitted by least squares on the library's number of images, then fine-tuned like lana's."""
    from bench.baselines import least_squares_blocks, match_latency, uniform_slim_model
    from bench.workloads import budget_table
    from lana.distill import DistillConfig
    from lana.teacher import save_state

    w, search, table = run.w, _search(run.w), budget_table(run.w, budget)

    def build(width: float):
        return uniform_slim_model(run.teacher, width, w.input_shape)

    def make(folder: Path):
        model, match = match_latency(build, target, w.input_shape, table, 0.05, 1.0, increasing=True, **search)
        start = time.perf_counter()
        fits = least_squares_blocks(model, run.teacher, run.train_set.images[: DistillConfig.ls_images], w.input_shape)
        seconds = time.perf_counter() - start
        before = run.evaluate(model, limit=w.corr_images)
        train_s = run.finetune(model, w.finetune_epochs, f"uniform slim {budget}")
        save_state(model, folder / "model.safetensors")
        return {
            "method": "uniform_slim",
            "budget": budget,
            "top1": run.evaluate(model),
            "top1_before_ft": before,
            "search_s": match.seconds + seconds,
            "train_s": train_s,
            "match": asdict(match),
            "width": match.knob,
            "ls_start": {name: [round(a, 5), round(b, 5)] for name, (a, b) in fits.items()},
        }, model

    run.cached(budget, "uniform_slim", make, _rebuild(build), depends={"lana": lana["plan"]})


def _measure_all(run) -> dict:
    """Every model of the workload, timed interleaved on every table; sizes; speed-ups."""
    from bench.workloads import budget_table
    from lana.accelerate import measure_latency
    from lana.student import model_stats

    w = run.w
    timings = {
        t: measure_latency(run.models, w.input_shape, t, rounds=w.latency_rounds, threads=w.threads) for t in w.tables
    }
    for row in run.rows:
        key = f"{row['method']}@{row['budget']}"
        row["latency"] = {t: timings[t][key] for t in w.tables}
        row["speedup"] = {t: timings[t]["teacher@-"]["median_ms"] / timings[t][key]["median_ms"] for t in w.tables}
        row.update(model_stats(run.models[key], w.input_shape))
        lana = f"lana@{row['budget']}"
        on = budget_table(w, row["budget"]) if row["budget"] != "-" else w.budget_table
        row["latency_vs_lana"] = (
            timings[on][key]["median_ms"] / timings[on][lana]["median_ms"] if lana in run.models else None
        )
    return timings


def _additivity(run) -> dict:
    """Predicted (library) vs measured latency of the library's plans and the teacher, per table."""
    import numpy as np

    from lana.latency_check import errors_vs_teacher

    errors = {}
    for t in run.w.tables:
        # the teacher first, for errors_vs_teacher
        rows = sorted((row for row in run.rows if row.get("predicted_ms") and t in row["predicted_ms"]),
                      key=lambda row: row["method"] != "teacher")  # fmt: skip
        predicted = [row["predicted_ms"][t] for row in rows]
        measured = [row["latency"][t]["median_ms"] for row in rows]
        signed = [100 * (p / m - 1) for p, m in zip(predicted, measured)]
        if signed:
            errors[t] = {
                "n": len(signed),
                "median_abs_pct": float(np.median(np.abs(signed))),
                "max_abs_pct": float(np.max(np.abs(signed))),
                "mean_signed_pct": float(np.mean(signed)),
            }
        # against the teacher timed in the same run: what an `x` budget depends on, free of the
        # machine's drift between the library's build and now (the same factor for every model)
        if len(rows) > 1 and rows[0]["method"] == "teacher":
            relative = errors_vs_teacher(predicted, measured)
            errors[t]["relative_median_abs_pct"] = float(np.median(np.abs(relative)))
            errors[t]["relative_max_abs_pct"] = float(np.max(np.abs(relative)))
    return errors


def run_workload(workload, out: str | os.PathLike) -> dict:
    """Run one workload end to end; writes and returns ``OUT/<name>/result.json``'s content."""
    import torch

    from bench.library_analysis import analyse
    from bench.workloads import WorkloadRun, budget_factor, budget_table
    from lana.accelerate import measure_latency
    from lana.correlation import spearman
    from lana.files import write_json
    from lana.solver import InfeasibleBudget

    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if workload.threads:
        torch.set_num_threads(workload.threads)
        # the process is pinned to `threads` cores, so that training, the baselines' searches and
        # every meter (lana's take the workload's thread count from its BuildConfig) agree
        if affinity and len(affinity) > workload.threads:
            os.sched_setaffinity(0, sorted(affinity)[: workload.threads])
    try:
        folder = Path(out) / workload.name
        run = WorkloadRun(workload, folder)
        w = run.w
        teacher_top1, teacher_before = run.evaluate(run.teacher), run.evaluate(run.teacher, limit=w.corr_images)
        # Other load only ever adds time, so the quieter of the two timings of the teacher (now, and
        # in the library's table) sets the budgets: a busy minute now cannot double every budget.
        teacher_by_table = {}
        for table in dict.fromkeys([w.budget_table, *(budget_table(w, b) for b in w.budgets)]):
            measured = measure_latency(
                {"teacher": run.teacher}, w.input_shape, table, rounds=w.latency_rounds, threads=w.threads
            )["teacher"]["median_ms"]
            predicted = run.problem.teacher_ms(table)
            teacher_by_table[table] = {"measured": measured, "predicted": predicted, "used": min(measured, predicted)}
            log.info("%s: teacher %.3f ms on %s now, %.3f ms in the library: budgets from %.3f ms", w.name, measured,
                     table, predicted, min(measured, predicted))  # fmt: skip
        measured_ms, teacher_ms = (teacher_by_table[w.budget_table][k] for k in ("measured", "used"))
        run.add(
            {
                "method": "teacher",
                "budget": "-",
                "top1": teacher_top1,
                "top1_before_ft": teacher_before,
                "predicted_drop": 0.0,
                "predicted_ms": {t: run.problem.teacher_ms(t) for t in run.problem.tables},
                "train_s": 60 * run.teacher_info["minutes"],
            },
            run.teacher,
        )
        budgets = {}
        for budget in w.budgets:
            budget_ms = budget_factor(budget) * teacher_by_table[budget_table(w, budget)]["used"]
            t0 = time.perf_counter()
            try:
                lana, student = _lana(run, budget, budget_ms)
            except InfeasibleBudget as error:  # below the library's fastest plan: nothing to match
                log.warning("%s %s: %s", w.name, budget, error)
                budgets[budget] = {"budget_ms": budget_ms, "infeasible": str(error)}
                continue
            _library_plans(run, budget, lana)
            _matched_baselines(run, budget, lana, student)
            _uniform_slim(run, budget, lana, student)
            budgets[budget] = {
                "budget_ms": lana["budget_ms"],
                "solve_s": lana["solve_s"],
                "wall_s": time.perf_counter() - t0,
            }
            log.info("%s %s done in %.0f s", w.name, budget, budgets[budget]["wall_s"])
        _measure_all(run)
        before = [(drop, teacher_before - top1) for drop, top1, _ in run.points]
        result = {
            "workload": asdict(w),
            "teacher": {k: v for k, v in run.teacher_info.items() if k != "config"},
            "teacher_ms": teacher_ms,
            "teacher_ms_measured": measured_ms,
            "teacher_ms_by_table": teacher_by_table,
            "train_images": len(run.train_set),
            "library": {
                **run.library,
                "layers": len(run.problem.layers),
                "candidates": sum(map(len, run.problem.specs)),
            },
            "budgets": budgets,
            "rows": run.rows,
            "correlation": {
                "spearman": spearman(*zip(*before)) if before else float("nan"),
                "n": len(before),
                "points": [{"predicted_drop": d, "top1_before_ft": a, "method": m} for d, a, m in run.points],
                "teacher_top1": teacher_before,
                "images": w.corr_images,
                "score": run.problem.score,
            },
            "additivity": _additivity(run),
            "wall_s": time.perf_counter() - start,
        }
        result["analysis"] = analyse(run.library["path"], w.budget_table)  # seconds: solves only
    finally:
        torch.set_num_threads(previous_threads)
        if affinity:
            os.sched_setaffinity(0, affinity)
    write_json(folder / "result.json", result)
    return result


def run_bench(
    names,
    out: str | os.PathLike = "runs/bench",
    smoke: bool = False,
    report: str | os.PathLike | None = None,
    budgets=None,
    argv: str = "python3 -m bench",
    full: bool = False,
    prepare_only: bool = False,
) -> Path:
    """Run the workloads ``names`` (``W1``, ``W2``) and write the report; returns its path.

    Args:
        smoke: the tiny-scale variant of every workload.
        report: the Markdown file (default: ``BENCHMARKS.md`` in the working directory, or in
            ``out`` for a smoke run, so that a smoke run never overwrites the real report).
        budgets: override every workload's budgets (e.g. ``("0.7x", "0.5x", "0.35x")``).
        full: the library's design scale (:data:`bench.workloads.FULL`) instead of the 2-core one.
        prepare_only: make (or reuse) the teachers and libraries and stop; returns ``out``.
    """
    from dataclasses import replace

    from bench.report import write_report
    from bench.workloads import FULL, WORKLOADS
    from bench.workloads import smoke as tiny
    from lana.files import read_json, write_json

    out = Path(out)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    if prepare_only:  # teacher and library (with its calibration) only: the long cold stages
        from bench.workloads import prepare_library, prepare_teacher

        for name in names:
            workload = replace(WORKLOADS[name], **FULL) if full else WORKLOADS[name]
            workload = tiny(workload) if smoke else workload
            teacher = prepare_teacher(workload, out / workload.name)
            prepare_library(workload, teacher["path"], out / workload.name)
        return out
    start = time.perf_counter()
    results = []
    for name in names:
        workload = replace(WORKLOADS[name], **FULL) if full else WORKLOADS[name]
        workload = tiny(workload) if smoke else workload
        if budgets:
            workload = replace(workload, budgets=tuple(budgets))
        results.append(run_workload(workload, out))
    wall_s = time.perf_counter() - start
    # workloads run before (e.g. `--workloads W1`, then `--workloads W2`) stay in the report
    earlier = read_json(out / "results.json")
    if earlier and earlier.get("smoke") == smoke:
        ran = {r["workload"]["name"] for r in results}
        kept = [r for r in earlier["results"] if r["workload"]["name"] not in ran]
        results = sorted(kept + results, key=lambda r: r["workload"]["name"])
        wall_s = sum(r["wall_s"] for r in results)
        argv = "; ".join(dict.fromkeys([*earlier["command"].split("; "), argv]))
    write_json(out / "results.json", {"results": results, "wall_s": wall_s, "smoke": smoke, "command": argv})
    report = Path(report) if report else (out if smoke else Path(".")) / "BENCHMARKS.md"
    return write_report(results, report, smoke=smoke, wall_s=wall_s, command=argv)


def rewrite_report(out: str | os.PathLike = "runs/bench", report: str | os.PathLike | None = None) -> Path:
    """Write the report again from ``OUT/results.json`` (no model is trained or timed).

    A result without the library analysis (one from before it existed) gets it now, from its
    library, which still holds the same numbers.
    """
    from bench.library_analysis import analyse
    from bench.report import write_report
    from lana.files import read_json, write_json

    out = Path(out)
    saved = read_json(out / "results.json")
    if saved is None:
        raise FileNotFoundError(
            f"{out / 'results.json'} is missing or unreadable: run the benchmark first (python3 -m bench)"
        )
    for result in saved["results"]:
        if "analysis" not in result:
            result["analysis"] = analyse(result["library"]["path"], result["workload"]["budget_table"])
    write_json(out / "results.json", saved)
    report = Path(report) if report else (out if saved["smoke"] else Path(".")) / "BENCHMARKS.md"
    return write_report(
        saved["results"], report, smoke=saved["smoke"], wall_s=saved["wall_s"], command=saved["command"]
    )
