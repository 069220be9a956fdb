"""``BENCHMARKS.md`` and its plots, from the harness's results (nothing here is measured).

Every sentence of the "What this shows" sections and of the goals table is computed from the
numbers of the run: where lana wins, where it loses, by how much, and the facts that bear on why.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path

from bench.library_analysis import markdown

__all__ = ["findings", "goals", "plot_fronts", "plot_workload", "write_report"]

_ORDER = ("teacher", "lana", "prune", "sibling", "uniform_slim", "greedy", "random")
_LABEL = {
    "teacher": "teacher",
    "lana": "lana (ILP)",
    "random": "random plans (best of N)",
    "greedy": "greedy plan",
    "uniform_slim": "uniform slim",
    "prune": "Torch-Pruning",
    "sibling": "smaller sibling",
}
# What a user would do instead of lana: "the best baseline" is the better of these. The other
# methods are ablations of lana itself (plans from its own library, one slim width everywhere).
COMPETITORS = ("prune", "sibling")
ABLATIONS = ("uniform_slim", "greedy", "random")


def _ms(value: float) -> str:
    return (
        f"{value:.0f}"
        if value >= 100
        else f"{value:.1f}"
        if value >= 10
        else f"{value:.2f}"
        if value >= 1
        else f"{value:.3f}"
    )


def _num(value, fmt: str = "{:.2f}", missing: str = "—") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _rows(result: dict) -> list[dict]:
    budgets = ["-", *result["workload"]["budgets"]]
    return sorted(result["rows"], key=lambda r: (budgets.index(r["budget"]), _ORDER.index(r["method"])))


def _by(result: dict, method: str, budget: str) -> dict | None:
    return next((r for r in result["rows"] if r["method"] == method and r["budget"] == budget), None)


def train_images(result: dict, row: dict) -> float | None:
    """Training images a method saw in all (epochs x training-set size, summed over its stages):
    the compute behind each row. lana and the plans of its library count the library's block
    distillation too; the W2 teacher's ImageNet pre-training is not counted (marked in the table)."""
    w, n = result["workload"], result.get("train_images")
    if not n:
        return None
    epochs = {
        "teacher": w["teacher_epochs"],
        "lana": w["build_epochs"] + w["finetune_epochs"],
        "random": w["build_epochs"] + w["finetune_epochs"],
        "greedy": w["build_epochs"] + w["finetune_epochs"],
        "prune": w["finetune_epochs"],
        "uniform_slim": w["finetune_epochs"],
        "sibling": w["sibling_epochs"],
    }[row["method"]]
    return epochs * n


def _images(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e3:.0f}k"


def _results_table(result: dict) -> list[str]:
    w = result["workload"]
    tables = w["tables"]
    teacher = _by(result, "teacher", "-")
    head = (
        ["method", "budget", "top-1 %", "Δ top-1", "before FT %"]
        + [f"{t} ms (IQR)" for t in tables]
        + [f"speed-up {t}" for t in tables]
        + ["latency / lana (budget's table)", "params M", "MMACs", "search s", "train s", "train images"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in _rows(result):
        cells = [
            r["method"],
            r["budget"],
            f"{r['top1']:.2f}",
            f"{r['top1'] - teacher['top1']:+.2f}",
            _num(r.get("top1_before_ft")),
        ]
        cells += [f"{_ms(r['latency'][t]['median_ms'])} ({_ms(r['latency'][t]['spread_ms'])})" for t in tables]
        cells += [f"{r['speedup'][t]:.2f}x" for t in tables]
        cells += [
            _num(r.get("latency_vs_lana"), "{:.3f}"),
            f"{r['params'] / 1e6:.3f}",
            f"{r['macs'] / 1e6:.1f}",
            _num(r.get("search_s"), "{:.1f}"),
            _num(r.get("train_s"), "{:.0f}"),
            _images(train_images(result, r)) + (" + ImageNet" if r["method"] == "teacher" and w["pretrained"] else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    cached = [f"{r['method']}@{r['budget']}" for r in _rows(result) if r.get("cached")]
    if cached:
        lines += [
            "",
            (
                f"Reused from an earlier run's cache (trained then; top-1 and times from then, latency measured "
                f"now): {', '.join(cached)}."
            ),
        ]
    return lines


def _stages_table(result: dict) -> list[str]:
    teacher, library = result["teacher"], result["library"]
    lines = [
        "| stage | wall s | note |",
        "|---|---:|---|",
        f"| teacher training | {60 * teacher['minutes']:.0f} | {'cached' if teacher['cached'] else 'this run'} |",
    ]
    note = "cached" if library["cached"] else "this run"
    for stage, seconds in library["stages_s"].items():
        lines.append(f"| library: {stage} | {seconds:.0f} | {note} |")
    cal = library.get("calibration")
    if cal:
        share = 100 * cal["seconds"] / cal["build_seconds"] if cal["build_seconds"] else float("nan")
        lines.append(
            f"| library: calibrate | {cal['seconds']:.0f} | {'cached' if cal['cached'] else 'this run'}, "
            f"{cal['samples']} whole students, {share:.0f}% of the build |"
        )
    for budget, info in result["budgets"].items():
        lana = _by(result, "lana", budget)
        if lana is None:
            lines.append(f"| {budget}: infeasible | — | {info.get('infeasible', 'no lana student')} |")
            continue
        lines += [
            (
                f"| {budget}: ILP solve | {info['solve_s']:.3f} | {lana.get('solver', '')}, {result['library']['layers']} layers x "
                f"{result['library']['candidates']} candidates |"
            ),
            (
                f"| {budget}: lana solve + assemble | {lana['search_s']:.1f} | library load, re-solve rounds: "
                f"{len(lana['resolve_rounds'])} |"
            ),
            f"| {budget}: lana fine-tune | {lana['train_s']:.0f} | {result['workload']['finetune_epochs']:g} epoch(s) KD |",
            (
                f"| {budget}: all methods | {info['wall_s']:.0f} | lana, competitors and ablations, searches included"
                f"{'; cached rows reused' if any(r.get('cached') for r in result['rows'] if r['budget'] == budget) else ''} |"
            ),
        ]
    return lines


def findings(result: dict) -> list[str]:
    """The "what this shows" bullets of one workload, each computed from the numbers."""
    from bench.workloads import budget_table

    w, out = result["workload"], []
    tolerance = w["match_tolerance"]
    for budget in w["budgets"]:
        table = budget_table(w, budget)
        lana = _by(result, "lana", budget)
        if lana is None:
            reason = result["budgets"].get(budget, {}).get("infeasible", "not run")
            out.append(f"**{budget}**: lana has no student at this budget ({reason}); no baseline was matched to it.")
            continue
        others = [r for r in result["rows"] if r["budget"] == budget and r["method"] not in ("lana", "teacher")]
        best = max((r for r in others if r["method"] in COMPETITORS), key=lambda r: r["top1"], default=None)
        head = (
            f"**{budget}** (lana {_ms(lana['latency'][table]['median_ms'])} ms on {table}, "
            f"{lana['speedup'][table]:.2f}x): "
        )
        if best is None:
            out.append(head + "no baseline ran.")
            continue
        margin = lana["top1"] - best["top1"]
        verdict = "lana wins" if margin > 0 else "lana loses" if margin < 0 else "a tie"
        text = (
            head + f"lana {lana['top1']:.2f}% vs the best baseline, {_LABEL[best['method']]}, {best['top1']:.2f}%: "
            f"{verdict} by {abs(margin):.2f} points."
        )
        if margin < 0:
            why = []
            if best["method"] == "sibling":
                why.append(
                    f"the sibling trained {w['sibling_epochs']:g} epochs from scratch, lana's student "
                    f"{w['finetune_epochs']:g} epoch(s) of fine-tuning after {w['build_epochs']:g} of block distillation"
                )
            if lana.get("top1_before_ft") is not None:
                why.append(
                    f"lana's student stood at {lana['top1_before_ft']:.2f}% before fine-tuning "
                    f"(predicted drop {lana['predicted_drop']:.3f} {result['correlation']['score']})"
                )
            used = lana["latency"][table]["median_ms"] / lana["budget_ms"]
            if used < 0.9:
                why.append(f"it used only {100 * used:.0f}% of its {_ms(lana['budget_ms'])} ms budget as measured")
            text += " Bearing on why: " + "; ".join(why) + "." if why else ""
        off = [
            f"{r['method']} {r['latency_vs_lana']:.2f}x"
            for r in others
            if r["method"] in (*COMPETITORS, "uniform_slim") and abs(r["latency_vs_lana"] - 1) > tolerance
        ]
        if off:
            text += f" Latency match missed (> {100 * tolerance:.0f}% from lana's, final pass): {', '.join(off)}."
        out.append(text)
        uniform = next((r for r in others if r["method"] == "uniform_slim"), None)
        if uniform:
            gain = lana["top1"] - uniform["top1"]
            out.append(
                f"{budget}, what choosing per layer adds (ablation): uniform slim, every block cut to width "
                f"{uniform['width']:.3f} at {uniform['latency_vs_lana']:.2f}x lana's latency, "
                f"{_num(uniform.get('top1_before_ft'))}% before fine-tuning → {uniform['top1']:.2f}%; lana "
                f"{_num(lana.get('top1_before_ft'))}% → {lana['top1']:.2f}%: lana {gain:+.2f} points."
            )
        library = [r for r in others if r["method"] in ("random", "greedy")]
        if library:
            parts = [
                f"{r['method']} {r['predicted_drop']:.3f} → {r['top1']:.2f}% ({r['latency_vs_lana']:.2f}x lana's latency)"
                for r in library
            ]
            gain = lana["top1"] - max(r["top1"] for r in library)
            out.append(
                f"{budget}, what the exact ILP adds inside the same library: predicted drop → top-1, "
                f"lana {lana['predicted_drop']:.3f} → {lana['top1']:.2f}%, "
                + ", ".join(parts)
                + f"; lana {'+' if gain >= 0 else ''}{gain:.2f} points over the better heuristic."
            )
    corr = result["correlation"]
    if corr["n"]:
        rho = corr["spearman"]
        strength = "n/a" if math.isnan(rho) else "strong" if rho >= 0.7 else "moderate" if rho >= 0.4 else "weak"
        out.append(
            f"The {corr['score']} score ranks the pre-fine-tune accuracy drop of {corr['n']} library plans with "
            f"Spearman ρ = {_num(rho)} ({strength}), on {corr['images']} test images."
        )
    cal = result["library"].get("calibration")
    if cal:
        out.append(
            f"Calibration (`lana calibrate`, issue 15): {cal['samples']} whole students assembled from the library, "
            f"{cal['held_out']} of them kept out of the fit; Spearman between predicted and measured drop on those: "
            f"one-swap sum ({cal['base']}) {_num(cal['spearman_one_swap'])}, calibrated ({cal['kind']}) "
            f"{_num(cal['spearman_calibrated'])}, on the score split"
            + (
                f"; among the held-out plans within the fit's range (drop ≤ {cal['max_drop']:.1f} points, half the "
                f"teacher's margin over chance; {cal['in_range']} of the {cal['samples']} students were fitted): "
                f"one-swap {_num(cal['spearman_one_swap_in_range'])}, calibrated {_num(cal['spearman_calibrated_in_range'])}"
                if cal.get("max_drop") is not None and cal.get("spearman_calibrated_in_range") is not None
                else ""
            )
            + f"; it took {cal['seconds']:.0f} s, {100 * cal['seconds'] / max(cal['build_seconds'], 1e-9):.0f}% "
            "of the library's build."
        )
    for t, e in result["additivity"].items():
        out.append(
            f"Latency model on {t}: the library's predictions are off by {e['median_abs_pct']:.1f}% (median; "
            f"max {e['max_abs_pct']:.1f}%, mean signed {e['mean_signed_pct']:+.1f}%) over {e['n']} models, "
            "measured end to end now (the library was timed when it was built)"
            + (
                f"; relative to the teacher timed now (what an `x` budget depends on, free of the machine's drift "
                f"since the build): {e['relative_median_abs_pct']:.1f}% (median; max {e['relative_max_abs_pct']:.1f}%)."
                if "relative_median_abs_pct" in e
                else "."
            )
        )
    return out


def goals(results: list[dict]) -> list[str]:
    """The goals (issues 8, 14 and 15) as a table: met or not, with the numbers behind each verdict."""
    lines = ["| goal | workload | result | met |", "|---|---|---|---|"]
    for result in results:
        w = result["workload"]
        for budget in ("0.5x", "0.35x"):
            lana = _by(result, "lana", budget)
            others = [r for r in result["rows"] if r["budget"] == budget and r["method"] in COMPETITORS]
            if lana is None or not others:
                why = (
                    "infeasible for lana's library" if "infeasible" in result["budgets"].get(budget, {}) else "not run"
                )
                lines.append(f"| ≥ 1 point over the best baseline at {budget} | {w['name']} | {why} | no |")
                continue
            best = max(others, key=lambda r: r["top1"])
            margin = lana["top1"] - best["top1"]
            lines.append(
                f"| ≥ 1 point over the best baseline at {budget} | {w['name']} | {margin:+.2f} "
                f"(vs {best['method']}) | {'yes' if margin >= 1 else 'no'} |"
            )
        for method in ("greedy", "random", "uniform_slim"):
            pairs = [(budget, _by(result, "lana", budget), _by(result, method, budget)) for budget in w["budgets"]]
            pairs = [(b, lana, other) for b, lana, other in pairs if lana and other]
            if pairs:
                text = ", ".join(f"{b}: {lana['top1'] - other['top1']:+.2f}" for b, lana, other in pairs)
                met = all(lana["top1"] >= other["top1"] for _, lana, other in pairs)
                lines.append(f"| lana ≥ {method} at every budget | {w['name']} | {text} | {'yes' if met else 'no'} |")
        cal = result["library"].get("calibration")
        if cal:
            target = 0.8 if w["pretrained"] else 0.9  # issue 15: W2's library (pretrained) 0.8, W1 0.9
            rho = cal["spearman_calibrated"]
            lines.append(
                f"| held-out Spearman of the calibrated score ≥ {target} | {w['name']} | {_num(rho)} "
                f"(one-swap {_num(cal['spearman_one_swap'])}, {cal['held_out']} plans"
                + (
                    f"; in the fit's range {_num(cal['spearman_calibrated_in_range'])}, one-swap "
                    f"{_num(cal['spearman_one_swap_in_range'])}"
                    if cal.get("spearman_calibrated_in_range") is not None
                    else ""
                )
                + f") | {'yes' if rho >= target else 'no'} |"
            )
            share = 100 * cal["seconds"] / max(cal["build_seconds"], 1e-9)
            lines.append(
                f"| calibration ≤ 15% of the library's build | {w['name']} | {share:.1f}% ({cal['seconds']:.0f} s) "
                f"| {'yes' if share <= 15 else 'no'} |"
            )
        lana = _by(result, "lana", "0.5x")
        if w["pretrained"] and lana and lana.get("top1_before_ft") is not None:
            before = lana["top1_before_ft"]
            lines.append(
                f"| lana's 0.5x student ≥ 70% before fine-tuning | {w['name']} | {before:.2f}% | "
                f"{'yes' if before >= 70 else 'no'} |"
            )
        teacher = _by(result, "teacher", "-")
        batch = {t: int(t.rsplit("-b", 1)[1]) for t in w["tables"]}
        b1 = next((t for t, b in batch.items() if b == 1), None)
        big = max(batch, key=batch.get)  # batch 64 in W1 and W2 (a smaller one in smoke runs)
        if b1 is None or big == b1:
            continue
        from bench.workloads import budget_table

        on_b1 = [r for r in result["rows"] if r["method"] == "lana" and budget_table(w, r["budget"]) == b1]
        if on_b1:  # issue 16: budgets set on the batch-1 table itself
            best = max(on_b1, key=lambda r: (teacher["top1"] - r["top1"] <= 0.5, r["speedup"][b1]))
            loss = teacher["top1"] - best["top1"]
            lines.append(
                f"| budget on {b1}: ≥ 3x at {b1} within 0.5 point | {w['name']} | {best['budget']}: {-loss:+.2f} points, "
                f"{best['speedup'][b1]:.2f}x {b1} | {'yes' if loss <= 0.5 and best['speedup'][b1] >= 3 else 'no'} |"
            )
        goal = f"≤ 0.5 point loss at ≥ 3x ({b1}) and ≥ 2x ({big})"
        close = [r for r in result["rows"] if r["method"] == "lana" and teacher["top1"] - r["top1"] <= 0.5]
        if close:
            fastest = max(close, key=lambda r: r["speedup"][big])
            met = fastest["speedup"][b1] >= 3 and fastest["speedup"][big] >= 2
            lines.append(
                f"| {goal} | {w['name']} | {fastest['budget']}: {fastest['top1'] - teacher['top1']:+.2f} points, "
                f"{fastest['speedup'][b1]:.2f}x {b1}, {fastest['speedup'][big]:.2f}x {big} | {'yes' if met else 'no'} |"
            )
        else:
            nearest = max((r for r in result["rows"] if r["method"] == "lana"), key=lambda r: r["top1"], default=None)
            detail = (
                f"closest {nearest['budget']}: {nearest['top1'] - teacher['top1']:+.2f} points"
                if nearest
                else "no lana row"
            )
            lines.append(f"| {goal} | {w['name']} | no lana student within 0.5 points ({detail}) | no |")
    return lines


def _save(figure, png: Path) -> Path:
    """Lay out and write the figure as PNG, atomically."""
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png


def plot_workload(result: dict, png: Path) -> Path:
    """Top-1 against measured latency, one panel per table, one line per method across budgets."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # no pyplot: no global state
    )
    from matplotlib.figure import Figure

    w = result["workload"]
    figure = Figure(figsize=(5.5 * len(w["tables"]), 4.2), dpi=110)
    FigureCanvasAgg(figure)
    for i, table in enumerate(w["tables"]):
        axes = figure.add_subplot(1, len(w["tables"]), i + 1)
        for method in _ORDER:
            rows = sorted(
                (r for r in result["rows"] if r["method"] == method), key=lambda r: r["latency"][table]["median_ms"]
            )
            if not rows:
                continue
            x = [r["latency"][table]["median_ms"] for r in rows]
            y = [r["top1"] for r in rows]
            style = (
                {"marker": "*", "markersize": 14, "linestyle": "none", "color": "black"}
                if method == "teacher"
                else {"marker": "o"}
            )
            axes.plot(x, y, label=_LABEL[method], **style)
            for r, xi, yi in zip(rows, x, y):
                if r["budget"] != "-":
                    axes.annotate(r["budget"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes.set_xlabel(f"measured latency on {table} (ms, median)")
        axes.set_ylabel("test top-1 (%)")
        axes.set_title(f"{w['name']}: {w['model']} at {w['img_size']} px, {table}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return _save(figure, png)


def plot_fronts(result: dict, png: Path) -> Path:
    """Predicted drop against budget, with every family and without those of issue 10."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, front = result["workload"], result["analysis"]["fronts"]
    figure = Figure(figsize=(6.5, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, drops in front["fronts"].items():
        points = [(f, d) for f, d in zip(front["factors"], drops) if d is not None]
        if points:
            style = {"linewidth": 2.5} if name in ("all", "without new") else {"linestyle": "--", "linewidth": 1}
            axes.plot(*zip(*points), marker="o", markersize=3, label=name, **style)
    axes.set_xlabel(f"budget (x the teacher's predicted latency on {result['analysis']['table']})")
    axes.set_ylabel(f"predicted drop (summed {result['analysis']['score']})")
    axes.set_title(f"{w['name']}: ILP optimum with and without the families of issue 10")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _save(figure, png)


def _machine() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    from lana.latency import fingerprint, make_meter

    info = fingerprint(make_meter("cpu"))
    versions = []
    for package in ("lana-accel", "torch", "timm", "torch-pruning", "numpy", "highspy", "h5py"):
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    load = os.getloadavg()
    return [
        (
            f"- Machine: {info['cpu']}, {info['cpu_count']} cores usable; {info['platform']}; load average at the end "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)."
        ),
        f"- Versions: Python {info['python']}, " + ", ".join(versions) + ".",
    ]


def write_report(
    results: list[dict],
    path: str | os.PathLike,
    smoke: bool = False,
    wall_s: float = 0.0,
    command: str = "python3 -m bench",
) -> Path:
    """Write ``path`` (Markdown) and one PNG per workload next to it, atomically; returns ``path``."""
    path = Path(path)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# lana benchmarks",
        "",
        f"Generated by `{command}` on {now}; the workloads ran {wall_s / 60:.1f} min in all (cached stages excluded).",
        "Reproduce with `make bench` (teachers and libraries are cached under `runs/bench/`).",
        "",
        *_machine(),
        "",
    ]
    if smoke:
        lines += [
            (
                "> **Smoke run**: a few hundred images and a handful of steps per stage. The numbers exercise the "
                "harness end to end and say nothing about lana."
            ),
            "",
        ]
    lines += [
        (
            "Methods, all fine-tuned by KD from the teacher with lana's recipe for the same epochs (the sibling, from "
            "random weights, with the teacher's recipe plus KD):"
        ),
        "",
    ]
    lines += [
        f"- **{m}**: {d}"
        for m, d in (
            ("lana", "`lana accelerate` at the budget: exact ILP over the library, re-solved if measured over budget."),
            (
                "random",
                "the best, by predicted score, of N random plans of the same library that meet the same predicted budget.",
            ),
            (
                "greedy",
                "from the teacher, repeatedly the swap with the least score added per ms saved, until under the budget.",
            ),
            (
                "prune",
                "Torch-Pruning (DepGraph, L2 group magnitude, same ratio per layer), ratio bisected to lana's measured latency.",
            ),
            (
                "sibling",
                "a narrower network of the family (W1: the teacher at reduced width; W2: LCNet), width bisected to lana's latency.",
            ),
            (
                "uniform_slim",
                "(ablation) every block cut to one width by lana's slim surgery, width bisected to lana's measured "
                "latency, least-squares start, then the same fine-tuning: what choosing per layer adds.",
            ),
        )
    ]
    lines += [
        "",
        (
            "The best baseline is the better of the competitors, Torch-Pruning and the sibling; random, greedy and "
            "uniform slim are ablations of lana (its own library or its own surgery), reported apart. `train images`: "
            "training images seen in all, every stage counted (lana: block distillation + fine-tuning)."
        ),
    ]
    lines += [
        "",
        (
            "Budgets are factors of the teacher's latency (each workload says which timing). Latency: torch eager on "
            "the CPU, median (and interquartile range) over interleaved rounds of 20 calls, all models of a workload "
            "in one pass. `before FT`: top-1 before fine-tuning, on the first test images (the correlation set). "
            "`search s`: ILP solve + assembly (lana), sampling (random, greedy) or latency bisection (prune, sibling)."
        ),
        "",
    ]
    for result in results:
        w = result["workload"]
        teacher = _by(result, "teacher", "-")
        png = path.with_name(f"{path.stem}-{w['name']}.png")
        plot_workload(result, png)
        lines += [
            (
                f"## {w['name']}: {w['model']}{' (ImageNet-pretrained)' if w['pretrained'] else ''} on {w['dataset']} "
                f"at {w['img_size']} px"
            ),
            "",
            (
                f"Teacher top-1 {teacher['top1']:.2f}% ({w['teacher_epochs']:g} epoch(s)); library: "
                f"{result['library']['layers']} layers, {result['library']['candidates']} candidates (space "
                f"`{w['space']}`); budgets on {w['budget_table']} ({_ms(result['teacher_ms'])} ms for the teacher, "
                + (
                    f"the lesser of its timing at the start ({_ms(result['teacher_ms_measured'])} ms) and the library's "
                    "prediction, as load only adds time"
                    if "teacher_ms_measured" in result
                    else "its timing at the start of the run"
                )
                + ")"
                + "".join(
                    f"; `@{t}` budgets on {t} ({_ms(v['used'])} ms for the teacher, measured {_ms(v['measured'])}, "
                    f"predicted {_ms(v['predicted'])}), the baselines matched on that table"
                    for t, v in result.get("teacher_ms_by_table", {}).items()
                    if t != w["budget_table"]
                )
                + "; "
                f"fine-tuning {w['finetune_epochs']:g} epoch(s), sibling {w['sibling_epochs']:g} epoch(s); "
                f"training images per stage: {w['limit'] or 'all'}; "
                f"workload wall time {result['wall_s'] / 60:.1f} min."
            ),
            "",
            "### Results",
            "",
            *_results_table(result),
            "",
            f"![{w['name']}: top-1 vs measured latency]({png.name})",
            "",
            "### Pipeline stages",
            "",
            *_stages_table(result),
            "",
            "### What this shows",
            "",
            *[f"- {line}" for line in findings(result)],
            "",
        ]
        if result.get("analysis"):
            fronts_png = plot_fronts(result, path.with_name(f"{path.stem}-{w['name']}-families.png"))
            lines += [
                "### Candidate families (issue 10)",
                "",
                (
                    "From the library alone (ILP solves, no training): predicted numbers, not measured ones. The "
                    "measured students above used the plans of the `all` column."
                ),
                "",
                *markdown(result["analysis"]),
                "",
                f"![{w['name']}: predicted fronts with and without the families of issue 10]({fronts_png.name})",
                "",
            ]
    lines += ["## Goals", "", *goals(results), ""]
    _atomic_write(path, "\n".join(lines))
    return path
