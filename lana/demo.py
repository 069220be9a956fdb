"""``lana demo``: the whole story on this machine, cached so that a second run takes seconds.

resnet18 teacher on Fashion-MNIST at 32 px (trained when absent), its library, students at 0.7x,
0.5x and 0.35x of the teacher's latency, a summary table, a Pareto plot, and one more budget
re-solved from the library to show the instant path.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DemoConfig", "run_demo", "summary_table"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    model: str = "resnet18"
    img_size: int = 32
    teacher_epochs: float | None = None  # None: DEFAULT_TEACHER_EPOCHS
    # A compact space (12 candidates a layer, the cheap ones of each family) so that the whole
    # demo fits 30 minutes on a 2-core CPU: it costs 0.048 teacher steps per candidate per batch
    # against 0.11 for the default space (bench/distill_cost.py).
    space: str = "id,ir_k3_e2,ir_k3_e3,dw_k3,conv_k3,basic_w0.25,basic_w0.5,bottleneck_w0.25,ghost_k3_r2,rep_k3,repdw_k3,fir_k3_e1"
    build_epochs: float = 0.3
    budgets: tuple[str, ...] = ("0.7x", "0.5x", "0.35x")
    table: str = "cpu-b64"
    finetune_epochs: float = 0.5
    latency_rounds: int = 3
    max_steps: int | None = None
    device: str = "auto"
    extra_budget: str = "0.6x"


# Epochs of the demo's teacher: what fits the demo's 30 minutes on a 2-core CPU.
DEFAULT_TEACHER_EPOCHS = 3.0


def _teacher(config: DemoConfig, out: Path) -> dict:
    from lana.teacher import TeacherConfig, train_teacher

    sidecar = out / "teacher" / "teacher.json"
    if sidecar.exists():
        info = json.loads(sidecar.read_text())
        if info.get("config", {}).get("max_steps") == config.max_steps:
            print(f"[1/4] teacher (cached): {info['model']} top-1 {info['top1']:.2f}% -> {info['path']}")
            return info
    epochs = config.teacher_epochs or DEFAULT_TEACHER_EPOCHS
    print(f"[1/4] training the teacher: {config.model} on Fashion-MNIST at {config.img_size} px, {epochs:g} epochs")
    teacher = TeacherConfig(
        model=config.model, dataset="fashion-mnist", img_size=config.img_size, epochs=epochs,
        max_steps=config.max_steps, device=config.device,
    )  # fmt: skip
    result = train_teacher(teacher, out / "teacher")
    print(f"      teacher top-1 {result.top1:.2f}% in {result.minutes:.1f} min")
    return asdict(result)


def summary_table(rows: list[dict]) -> str:
    """Rows of ``{name, top1, b1, b64, params}`` → a text table with speed-ups vs the first row."""
    base = rows[0]
    head = f"{'model':<16} {'top-1 %':>8} {'Δtop-1':>7} {'b1 ms':>8} {'b64 ms':>8} {'speed-up b1':>11} {'b64':>6} {'params':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<16} {r['top1']:>8.2f} {r['top1'] - base['top1']:>+7.2f} {r['b1']:>8.3f} {r['b64']:>8.2f} "
            f"{base['b1'] / r['b1']:>10.2f}x {base['b64'] / r['b64']:>5.2f}x {r['params']:>11,}"
        )
    return "\n".join(lines)


def run_demo(config: DemoConfig = DemoConfig()) -> dict:
    """Run (or reuse) every stage and print the summary; returns the summary rows."""
    from lana.accelerate import AccelerateConfig, FinetuneConfig, accelerate
    from lana.pipeline import BuildConfig
    from lana.plan import SolveOptions, pareto, plot_pareto, solve_library

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    teacher = _teacher(config, out)
    library = out / "library.h5"
    print(f"[2/4] library {library}: distilling, scoring and timing every candidate (reused when present)")
    rows, reports = [], {}
    for budget in config.budgets:
        student_dir = out / f"student-{budget}"
        report_path = student_dir / "report.json"
        build = BuildConfig(
            model=config.model, checkpoint=teacher["path"], dataset="fashion-mnist", img_size=config.img_size,
            space=config.space, epochs=config.build_epochs, max_steps=config.max_steps, device=config.device,
            latency_rounds=config.latency_rounds,
        )  # fmt: skip
        acfg = AccelerateConfig(
            build=build,
            budget=budget,
            solve=SolveOptions(table=config.table),
            finetune=FinetuneConfig(epochs=config.finetune_epochs, max_steps=config.max_steps),
            library=str(library),
        )
        cached = json.loads(report_path.read_text()) if report_path.exists() else None
        if cached and cached.get("config") == json.loads(json.dumps(asdict(acfg))):
            report = cached
            print(f"[3/4] student at {budget} (cached)")
        else:
            print(
                f"[3/4] student at {budget}: solve, assemble, fine-tune {config.finetune_epochs:g} epoch(s), measure, export"
            )
            report = accelerate(acfg, student_dir)
        reports[budget] = report
    first = next(iter(reports.values()))
    t = first["teacher"]
    rows.append(
        {
            "name": "teacher",
            "top1": t["top1"],
            "b1": t["latency_ms_by_table"].get("cpu-b1", float("nan")),
            "b64": t["latency_ms_by_table"].get("cpu-b64", float("nan")),
            "params": t["params"],
        }
    )
    for budget, report in reports.items():
        s = report["student"]
        rows.append(
            {
                "name": f"lana {budget}",
                "top1": s["top1"],
                "b1": s["latency_ms_by_table"].get("cpu-b1", float("nan")),
                "b64": s["latency_ms_by_table"].get("cpu-b64", float("nan")),
                "params": s["params"],
            }
        )
    print("[4/4] summary (test top-1 on the 10,000 official test images; latency = median, measured end to end)")
    print(summary_table(rows))
    budgets = [f"{b:.2f}x" for b in [0.2 + 0.05 * i for i in range(17)]]
    try:
        front = pareto(library, budgets, table=config.table)
        png = plot_pareto(front, out / "pareto.png")
        print(f"Pareto front (predicted) over {len(front)} budgets: {png}")
    except Exception as error:  # a plot must not sink the demo
        log.warning("no Pareto plot: %s", error)
    t0 = time.perf_counter()
    plan = solve_library(library, config.extra_budget, table=config.table)
    seconds = time.perf_counter() - t0
    print(
        f"re-solved a new budget ({config.extra_budget} = {plan.budget_ms:.2f} ms on {config.table}) from the library in "
        f"{seconds * 1000:.0f} ms: predicted {plan.predicted_latency_ms:.2f} ms, predicted drop {plan.predicted_drop:.4f}"
    )
    print(f"demo done in {time.perf_counter() - start:.0f} s; outputs in {out}/")
    (out / "summary.json").write_text(json.dumps({"rows": rows, "resolve_s": seconds}, indent=1))
    return {"rows": rows, "resolve_s": seconds}
