"""The whole path: build (or reuse) the library, solve, assemble, fine-tune, measure, export.

``accelerate`` is what ``lana accelerate`` runs; the budget is met as *measured*: when the
assembled student is slower than the budget by more than the table's noise, the plan is re-solved
with the budget tightened by the observed error (at most 3 rounds).

With ``int8`` the library holds int8 twins of every candidate and the plan may run some layers in
int8 (CPU only). Int8 kernels cannot be trained, so the float student is fine-tuned, then its int8
layers are quantized on the calibration images (``lana.student.quantize_layers``), and that
student is measured, evaluated and exported; the float weights are what ``student.safetensors``
keeps.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py

__all__ = ["AccelerateConfig", "accelerate", "measure_latency", "library_matches", "format_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccelerateConfig:
    model: str = "resnet18"
    checkpoint: str | None = None
    pretrained: bool = False
    dataset: str = "fashion-mnist"
    img_size: int = 32
    space: str = "default"
    budget: str = "0.5x"
    table: str | None = None  # the budget's latency table (default: the library's first)
    score: str | None = None
    library: str | None = None  # default OUT/library.h5; reused when built for the same teacher/data/space
    build_epochs: float = 1.0
    finetune_epochs: float = 1.0
    max_steps: int | None = None
    device: str = "auto"
    diverse: int = 1
    min_diff: int = 2
    limit: int | None = None
    score_images: int | None = 2000
    eval_limit: int | None = None  # test images for the final top-1 (None: all)
    tables: tuple[str, ...] | None = None
    latency_rounds: int = 5
    export: bool = True
    seed: int = 0
    threads: int | None = None  # CPU threads for latency measurement (default: all cores)
    int8: bool = False  # int8 twins of the candidates (CPU, cpu-b* tables only)


def library_matches(path: str | os.PathLike, config: AccelerateConfig, checkpoint_sha: str | None) -> bool:
    """True when ``path`` is a complete library of the same teacher, data, space, size and
    precisions (``int8``)."""
    from lana.library import complete_config

    built = complete_config(path)
    if built is None:
        return False
    wanted = {
        "model": config.model,
        "checkpoint_sha256": checkpoint_sha,
        "pretrained": config.pretrained,
        "dataset": config.dataset,
        "img_size": config.img_size,
        "space": config.space,
    }
    return all(built.get(k) == v for k, v in wanted.items()) and bool(built.get("int8", False)) == config.int8


def measure_latency(
    models: dict, input_shape, table: str, rounds: int = 5, threads: int | None = None
) -> dict[str, dict]:
    """Median (and IQR) end-to-end latency of each model on ``table``'s target, interleaved.

    Models are timed in shipped form (:func:`lana.candidates.inference_form`: BN folded, rep
    branches fused), as the library's tables are.
    """
    from lana.candidates import inference_form
    from lana.latency import Timing, make_meter
    from lana.pipeline import parse_table_name

    spec = parse_table_name(table)
    meter = make_meter(spec["device"], spec["backend"], spec["batch_size"], threads=threads)
    models = {name: inference_form(model) for name, model in models.items()}  # timed as shipped
    samples = {name: [] for name in models}
    for _ in range(rounds):  # interleave so that drifting load hits every model alike
        for name, model in models.items():
            samples[name] += list(meter(model, input_shape).samples_ms)
    return {
        name: {"median_ms": Timing.of(s).median_ms, "spread_ms": Timing.of(s).spread_ms} for name, s in samples.items()
    }


def _table_noise(path, table: str) -> float:
    """Relative noise of a table: the teacher's spread over its median (at least 3%)."""
    with h5py.File(path, "r") as f:
        attrs = f["latency_tables"][table].attrs
        return max(0.03, float(attrs.get("fixed_spread_ms", 0.0)) / max(1e-9, float(attrs["teacher_ms"])))


def _first_table(path) -> str:
    with h5py.File(path, "r") as f:
        return sorted(f["latency_tables"])[0] if "latency_tables" in f and len(f["latency_tables"]) else "cpu-b1"


def accelerate(config: AccelerateConfig, out: str | os.PathLike) -> dict:
    """Run the whole pipeline and write ``OUT/report.json``; returns the report."""
    from lana.data import load_dataset
    from lana.export import export_all
    from lana.finetune import finetune
    from lana.pipeline import BuildConfig, build, check_int8_target, context_from_library, default_tables
    from lana.plan import solve_diverse, solve_library
    from lana.solver import InfeasibleBudget
    from lana.student import int8_layers, model_stats, quantize_layers, save_student, student_from_context
    from lana.teacher import file_sha256
    from lana.train import evaluate, resolve_device

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    if config.int8:  # before any work, and also when a library is reused (then build() never checks)
        check_int8_target(device.type, config.tables or default_tables(device.type))
    stages: dict[str, float] = {}
    library = Path(config.library) if config.library else out / "library.h5"
    sha = file_sha256(config.checkpoint) if config.checkpoint else None
    t0 = time.perf_counter()
    if library.exists() and library_matches(library, config, sha):
        log.info("reusing library %s", library)
    else:
        build(
            BuildConfig(
                model=config.model,
                checkpoint=config.checkpoint,
                pretrained=config.pretrained,
                dataset=config.dataset,
                img_size=config.img_size,
                space=config.space,
                epochs=config.build_epochs,
                max_steps=config.max_steps,
                device=device.type,
                seed=config.seed,
                limit=config.limit,
                score_images=config.score_images,
                tables=config.tables,
                latency_rounds=config.latency_rounds,
                threads=config.threads,
                int8=config.int8,
            ),
            library,
        )
    stages["build"] = time.perf_counter() - t0
    table = config.table or _first_table(library)

    t0 = time.perf_counter()
    ctx = context_from_library(library)
    input_shape = ctx.input_shape
    plan = solve_library(library, config.budget, table=table, score=config.score)
    budget_ms = plan.budget_ms
    stages["solve"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    score_set = load_dataset(config.dataset, "score", config.img_size, seed=config.seed, limit=config.score_images)
    if config.diverse > 1:  # measure K diverse plans and keep the most accurate feasible one
        plans = solve_diverse(
            library, config.budget, k=config.diverse, min_diff=config.min_diff, table=table, score=config.score
        )
        students = {f"plan{i}": student_from_context(ctx, p) for i, p in enumerate(plans)}
        timings = measure_latency(students, input_shape, table, rounds=config.latency_rounds, threads=config.threads)
        ranked = sorted(
            range(len(plans)),
            key=lambda i: (
                timings[f"plan{i}"]["median_ms"] > budget_ms * 1.03,
                -evaluate(students[f"plan{i}"], score_set),
            ),
        )
        plan = plans[ranked[0]]
    rounds, target = [], budget_ms
    for attempt in range(3):
        student = student_from_context(ctx, plan)
        measured = measure_latency(
            {"student": student}, input_shape, table, rounds=config.latency_rounds, threads=config.threads
        )["student"]["median_ms"]
        rounds.append({"budget_ms": target, "predicted_ms": plan.predicted_latency_ms, "measured_ms": measured})
        if measured <= budget_ms * (1 + _table_noise(library, table)) or attempt == 2:
            break
        target = target * budget_ms / measured
        log.info("student measured %.3f ms > budget %.3f ms: re-solving at %.3f ms", measured, budget_ms, target)
        try:
            plan = solve_library(library, target, table=table, score=config.score)
        except InfeasibleBudget as error:  # no plan of the library is predicted that fast: keep the fastest so far
            log.warning("cannot tighten further (%s); keeping the last plan", error)
            break
    stages["assemble"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train_set = load_dataset(config.dataset, "train", config.img_size, seed=config.seed, limit=config.limit)
    test_set = load_dataset(config.dataset, "test", config.img_size, limit=config.eval_limit)
    if int8_layers(plan):  # int8 kernels cannot backprop: fine-tune the float parents, quantize after
        student = student_from_context(ctx, plan, float_only=True)
    if config.finetune_epochs > 0:
        finetune(
            student,
            ctx.teacher,
            train_set,
            epochs=config.finetune_epochs,
            device=device,
            max_steps=config.max_steps,
            desc=f"fine-tune {config.budget}",
        )
    student = student.cpu().eval()
    float_student = student  # what is saved, and counted: int8 modules hide their weights from both
    if int8_layers(plan):
        student = quantize_layers(copy.deepcopy(float_student), plan, ctx.calibration.images())
        log.info("int8 layers of the student: %s", ", ".join(int8_layers(plan)))
    stages["finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    teacher = ctx.teacher.cpu().eval()
    latency = {
        t: measure_latency(
            {"teacher": teacher, "student": student},
            input_shape,
            t,
            rounds=config.latency_rounds,
            threads=config.threads,
        )
        for t in _tables(library)
    }
    report = {
        "budget": config.budget,
        "budget_ms": budget_ms,
        "table": table,
        "budget_met": latency[table]["student"]["median_ms"] <= budget_ms * (1 + _table_noise(library, table)),
        "teacher": {
            "top1": evaluate(teacher, test_set, device=device),
            "latency_ms": latency[table]["teacher"]["median_ms"],
            **model_stats(teacher, input_shape),
            "latency_ms_by_table": {t: v["teacher"]["median_ms"] for t, v in latency.items()},
        },
        "student": {
            "top1": evaluate(student, test_set, device=device),
            "latency_ms": latency[table]["student"]["median_ms"],
            **model_stats(float_student, input_shape),
            "plan": plan.to_dict(),
            "int8_layers": int8_layers(plan),
            "latency_ms_by_table": {t: v["student"]["median_ms"] for t, v in latency.items()},
        },
        "resolve_rounds": rounds,
        "library": str(library),
    }
    report["speedup"] = report["teacher"]["latency_ms"] / report["student"]["latency_ms"]
    report["speedup_by_table"] = {t: v["teacher"]["median_ms"] / v["student"]["median_ms"] for t, v in latency.items()}
    stages["measure"] = time.perf_counter() - t0
    save_student(float_student, plan, ctx, out, extra={"top1": report["student"]["top1"]})
    if config.export:
        t0 = time.perf_counter()
        report["exports"] = {k: asdict(v) for k, v in export_all(student, input_shape, out).items()}
        stages["export"] = time.perf_counter() - t0
    report["stages_s"] = stages
    report["config"] = asdict(config)
    from lana.teacher import write_json

    write_json(out / "report.json", report)
    return report


def _tables(library) -> list[str]:
    with h5py.File(library, "r") as f:
        return sorted(f["latency_tables"])


def format_report(report: dict) -> str:
    """The report as a small table."""
    t, s = report["teacher"], report["student"]
    tables = sorted(t["latency_ms_by_table"])
    head = (
        f"{'model':<10} {'top-1 %':>8} "
        + " ".join(f"{n + ' ms':>12}" for n in tables)
        + f" {'params':>10} {'MMACs':>8}"
    )
    rows = [head, "-" * len(head)]
    for name, m in (("teacher", t), ("student", s)):
        rows.append(
            f"{name:<10} {m['top1']:>8.2f} "
            + " ".join(f"{m['latency_ms_by_table'][n]:>12.3f}" for n in tables)
            + f" {m['params']:>10,} {m['macs'] / 1e6:>8.1f}"
        )
    rows.append(
        "speed-up: "
        + ", ".join(f"{n} {v:.2f}x" for n, v in report["speedup_by_table"].items())
        + f"; budget {report['budget']} = {report['budget_ms']:.3f} ms on {report['table']}: "
        + ("met" if report["budget_met"] else "NOT met")
    )
    return "\n".join(rows)
