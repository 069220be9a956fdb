"""``BENCHMARKS.md`` and its plots, from the harness's results (nothing here is measured).

Every sentence of the "What this shows" sections and of the goals table is computed from the
numbers of the run: where lana wins, where it loses, by how much, and the facts that bear on why.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from bench.library_analysis import markdown
from bench.verdict import COMPETITORS, LONG

__all__ = ["findings", "verdicts", "write_report"]

_ORDER = ("teacher", "lana", *COMPETITORS, "uniform_slim", "ilp", "greedy", "random",
          *(f"{m}{LONG}" for m in ("lana", *COMPETITORS)))  # fmt: skip
_LABEL = {
    "teacher": "teacher",
    "lana": "lana",
    "ilp": "the ILP's own plan",
    "random": "random plans (best of N)",
    "greedy": "greedy plan",
    "uniform_slim": "uniform slim",
    "prune": "Torch-Pruning",
    "fastnas": "FastNAS (Model Optimizer)",
    "sibling": "smaller sibling",
    **{f"{m}{LONG}": f"{m}, fine-tuned longer" for m in ("lana", *COMPETITORS)},
}
# What a user would do instead of lana is bench.verdict.COMPETITORS ("the best baseline" is the
# better of them). The other methods are ablations of lana itself (plans from its own library, one
# slim width everywhere).
ABLATIONS = ("uniform_slim", "ilp", "greedy", "random")


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


def _label(result: dict) -> str:
    """The workload's name, and which section of it a result is (bench/merge.py ``sections``)."""
    section = result.get("section")
    name = result["workload"]["name"]
    return f"{name} ({section['index']} of {section['of']})" if section else name


def _section_lines(result: dict) -> list[str]:
    """Why a workload is rendered in sections: what sets this one apart from section 1."""
    section = result.get("section")
    if not section:
        return []
    name = result["workload"]["name"]
    if section["index"] == 1:
        return [
            f"- Section 1 of {section['of']} of {name}'s budgets; the others ran with the same code digests and "
            "settings on another machine or with another teacher (a training run reproduces only on the same CPU), "
            "so each section is a whole run of its own budgets: its own teacher, library and final timing pass, "
            "and every comparison stays within one section."
        ]
    return [
        f"- Section {section['index']} of {section['of']} of {name}'s budgets, a whole run of its own (same code "
        f"digests and settings as section 1); apart from section 1 in: {'; '.join(section['apart']) or 'nothing'}."
    ]


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
    # issue 25 item 4: every method sees lana's images after the teacher (distillation + fine-tuning)
    longer = w.get("longer_factor", 1.0) if row["method"].endswith(LONG) else 1.0
    after = w["build_epochs"] + w["finetune_epochs"] * longer
    epochs = w["teacher_epochs"] if row["method"] == "teacher" else after
    if row["method"].removesuffix(LONG) == "sibling":  # trained as the teacher was, then as long as lana after it
        epochs += w["teacher_epochs"]
    return epochs * n


def _images(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e3:.0f}k"


def _results_table(result: dict) -> list[str]:
    w = result["workload"]
    tables = w["tables"]
    teacher = _by(result, "teacher", "-")
    head = (
        ["method", "budget", "top-1 % (± std, seeds)", "Δ top-1", "before FT %"]
        + [f"{t} ms (IQR)" for t in tables]
        + [f"speed-up {t}" for t in tables]
        + ["latency / lana (budget's table)", "params M", "MMACs", "search s", "train s", "train images"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in _rows(result):
        spread = f" ± {r['top1_std']:.2f} ({len(r['top1_seeds'])})" if r.get("top1_std") is not None else ""
        cells = [
            r["method"] + (" ⚠ stale" if r.get("stale") else ""),
            r["budget"],
            f"{r['top1']:.2f}{spread}",
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
            _images(train_images(result, r))
            + (
                " + ImageNet"
                if (r["method"] == "teacher" and w["pretrained"]) or "ImageNet" in r.get("sibling", "")
                else ""
            ),
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
            *(
                [
                    f"| {budget}: lana measured selection | {lana['select_s']:.1f} | {len(lana['selection']['plans'])} "
                    f"plans on {lana['selection']['score_images']} score images, kept {lana['selection']['chosen']} |"
                ]
                if lana.get("selection")
                else []
            ),  # fmt: skip
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
    judged = verdicts(result)
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
            if lana.get("top1_before_ft") is not None:
                why.append(
                    f"lana's student stood at {lana['top1_before_ft']:.2f}% before fine-tuning "
                    f"(predicted drop {lana['predicted_drop']:.3f} {result['correlation']['score']})"
                )
            used = judged[budget]["lana_vs_budget"]  # as the verdict measures it: lana has a row here
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


def _folded(rows: list[dict]) -> list[dict]:
    """``rows`` with one row per method and budget (seeds folded), as the report renders them."""
    from bench.verdict import aggregate

    return rows if all("top1_seeds" in r for r in rows) else aggregate(rows)


def _factor(result: dict, budget: str) -> float:
    from bench.workloads import budget_factor

    info = result["budgets"].get(budget, {})
    return info["factor"] if "factor" in info else budget_factor(budget)


def verdicts(result: dict) -> dict[str, dict | None]:
    """:func:`bench.verdict.budget_verdict` at every budget of an aggregated ``result``."""
    from bench.verdict import budget_verdict
    from bench.workloads import budget_table

    w, rows = result["workload"], _folded(result["rows"])

    def timed_with(budget: str) -> list[dict]:
        """``rows`` with the teacher as timed in the pass that timed ``budget`` (bench/merge.py:
        a workload run in parts keeps each part's teacher timing beside its budgets)."""
        latency = result["budgets"].get(budget, {}).get("teacher_latency")
        return rows if latency is None else [dict(r, latency=latency) if r["method"] == "teacher" else r for r in rows]

    return {b: budget_verdict(timed_with(b), b, budget_table(w, b), _factor(result, b)) for b in w["budgets"]}


def _interval(c: dict) -> str:
    if c["low"] is None:
        return "—"
    return f"[{c['low']:+.2f}, {c['high']:+.2f}]"


def verdict_table(result: dict) -> list[str]:
    """One line per budget and method compared with lana: difference, interval, seeds, verdict."""
    lines = [
        "| budget | lana / budget (measured) | vs | Δ top-1 (lana − other) | 95% interval | seeds (lana, other) | "
        "latency / lana | verdict |",
        "|---|---:|---|---:|---|---|---:|---|",
    ]
    for budget, found in verdicts(result).items():
        if found is None:
            lines.append(f"| {budget} | — | — | — | — | — | — | no lana student |")
            continue
        band = f"{found['lana_vs_budget']:.3f}" + ("" if found["lana_in_band"] else " ⚠")
        ordered = sorted(found["comparisons"], key=lambda c: (c["other"] not in COMPETITORS, _ORDER.index(c["other"])))
        for c in ordered:
            best = " (best competitor)" if c["other"] == found["best"] else ""
            ratio = _num(c["latency_ratio"], "{:.3f}")
            lines.append(
                f"| {budget} | {band} | {c['other']}{best} | {c['diff']:+.2f} | {_interval(c)} | "
                f"{c['seeds'][0]}, {c['seeds'][1]} | {ratio} | {c['verdict']} |"
            )
        lines.append(f"| **{budget}** | {band} | **best competitor** | | | | | **{found['verdict']}** |")
    return lines


def longer_lines(result: dict) -> list[str]:
    """Issue 25 item 4: at the workload's ``longer`` budget, lana and the best competitor trained
    longer, against the same two at the standard length (seed 0 of each, so one seed a side)."""
    w = result["workload"]
    budget = w.get("longer")
    rows = result.get("rows_by_seed", result["rows"])
    first = {r["method"]: r for r in rows if r["budget"] == budget and not r.get("seed")}
    long = {m.removesuffix(LONG): r for m, r in first.items() if m.endswith(LONG)}
    if not budget or "lana" not in long or "lana" not in first:
        return []
    lines = [
        f"At {budget}, lana's plan and the best competitor are fine-tuned again on {w['longer_factor']:g}x lana's "
        "fine-tuning images (the competitor on as many images after the teacher as lana then sees); seed 0 on "
        "both sides, so a single seed each: read differences under a point as noise.",
        "",
        "| method | train images (standard → longer) | top-1 standard | top-1 longer | gain |",
        "|---|---|---:|---:|---:|",
    ]
    for method, row in long.items():
        base = first.get(method)
        if base is None:
            continue
        lines.append(
            f"| {method} | {_images(train_images(result, base))} → {_images(train_images(result, row))} | "
            f"{base['top1']:.2f} | {row['top1']:.2f} | {row['top1'] - base['top1']:+.2f} |"
        )
    others = [m for m in long if m != "lana" and m in first]
    for other in others:
        before, after = first["lana"]["top1"] - first[other]["top1"], long["lana"]["top1"] - long[other]["top1"]
        lines += [
            "",
            f"lana minus {other} (seed 0): {before:+.2f} at the standard length, {after:+.2f} trained longer.",
        ]
    return lines


def _failure_lines(result: dict) -> list[str]:
    """A competitor that could not handle the model, with the error quoted (issue 25 item 3)."""
    return [
        f"- {method} at {budget} failed: `{error}`"
        for budget, failed in result.get("failures", {}).items()
        for method, error in failed.items()
    ]


def _aggregated(result: dict, stale: list[str], aggregate) -> dict:
    """``result`` with one row per method and budget (seeds folded: mean, std), stale rows marked."""
    rows = [dict(r, stale=f"{r['method']}@{r['budget']} (seed {r.get('seed', 0)})" in stale) for r in result["rows"]]
    return {**result, "rows": aggregate(rows), "rows_by_seed": rows}


def _provenance_lines(result: dict) -> list[str]:
    """Where a workload's figures came from: commit, machine, load, code digests."""
    if "commit" not in result:
        return ["- Provenance: not recorded (a result from before issue 25)."]
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items() if v)

    def load(part: dict) -> str:
        average = part["load_average"]
        return (
            f"load average {' / '.join(f'{x:.1f}' for x in average['start'])} at the start, "
            f"{' / '.join(f'{x:.1f}' for x in average['end'])} at the end (1/5/15 min)"
        )

    if "parts" in result:  # run in parts, merged by bench/merge.py: same code digests, machine, teacher, library
        where = [
            f"- Run in {len(result['parts'])} parts with the same code digests (below), CPU, package versions, teacher "
            f"and library, merged by `python3 -m bench --merge`; {result['cpu']}, {result['cores']} cores usable; "
            f"{result['platform']}. Each budget's rows come from one part, timed in its final interleaved pass:",
            *(
                f"  - {', '.join(p['budgets'])}: commit {p['commit']}, finished {p['finished']}, "
                f"{p['wall_s'] / 60:.0f} min, {load(p)}."
                for p in result["parts"]
            ),
        ]
    else:
        where = [
            f"- Commit {result['commit']}, finished {result['finished']}; {result['cpu']}, {result['cores']} cores "
            f"usable; {result['platform']}; {load(result)}."
        ]
    return [
        *where,
        f"- Versions: Python {result['python']}, {versions}.",
        "- Code digests per stage: " + ", ".join(f"{k} `{v}`" for k, v in result["code"].items()) + ".",
    ]


def write_report(
    results: list[dict],
    path: str | os.PathLike,
    smoke: bool = False,
    wall_s: float = 0.0,
    command: str = "python3 -m bench",
    allow_stale: bool = False,
) -> Path:
    """Write ``path`` (Markdown) and one PNG per workload next to it, atomically; returns ``path``.

    Nothing in it depends on when or where it is rendered: a fresh clone re-renders it byte for
    byte from the same results. Rows made by other code than their run's (stale cache entries)
    are refused unless ``allow_stale``, then marked.
    """
    from bench.goals import goals  # (they import this module's helpers)
    from bench.merge import section_file
    from bench.plots import plot_fronts, plot_workload
    from bench.provenance import stale_rows
    from bench.verdict import aggregate

    path = Path(path)
    results = sorted(results, key=lambda r: (r["workload"]["name"], (r.get("section") or {}).get("index", 1)))
    stale = {_label(r): stale_rows(r) for r in results}
    if any(stale.values()) and not allow_stale:
        listed = "; ".join(f"{name}: {', '.join(rows)}" for name, rows in stale.items() if rows)
        raise ValueError(
            f"results mix code versions (rows made by other code than their run's): {listed}. Rerun those "
            "stages, or pass --allow-stale to render them marked as stale."
        )
    results = [_aggregated(r, stale[_label(r)], aggregate) for r in results]
    lines = [
        "# lana benchmarks",
        "",
        f"Rendered by `python3 -m bench --report-only` from `bench/results/*.json`, written by `{command}`; the "
        f"workloads ran {wall_s / 60:.1f} min in all (cached stages excluded). Each section names the commit and "
        "the machine that made it. Reproduce with `bench/snapshot.sh COMMIT --workloads W1` (teachers, libraries "
        "and competitors are cached under `runs/bench/`).",
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
            "Methods. Every method sees the same training images after the teacher (lana: block distillation "
            "+ fine-tuning; the others: KD fine-tuning from the teacher, lana's recipe; the sibling: the teacher's "
            "recipe with KD, for the teacher's epochs plus those): the `train images` column counts them."
        ),
        "",
    ]
    lines += [
        f"- **{m}**: {d}"
        for m, d in (
            ("lana", "`lana accelerate` at the budget: exact ILP over the library, re-solved if measured over budget."),
            (
                "prune",
                "Torch-Pruning at its strongest documented CNN recipe: Taylor importance on 4 batches, global "
                "pruning with a 0.9 per-layer cap, isomorphic groups, channels rounded to 8, BN statistics "
                "re-estimated on 1,024 training images; the global ratio bisected to the budget.",
            ),
            (
                "fastnas",
                "NVIDIA Model Optimizer's FastNAS (`mtp.prune`, mode `fastnas`): a FLOPs constraint bisected to the "
                "budget, its score function top-1 on 1,024 images of the score split, BN calibration through its "
                "data loader, then BN re-estimated as for prune.",
            ),
            (
                "sibling",
                "a smaller network of the family: W1 the teacher at reduced width, from random weights, width "
                "bisected to the budget; W2 the pretrained Lite1 / Lite0 whose own latency is the budget.",
            ),
            (
                "uniform_slim",
                "(ablation) every block cut to one width by lana's slim surgery, width bisected to the budget, "
                "least-squares start, then KD fine-tuning: what choosing per layer adds.",
            ),
            (
                "ilp",
                "(ablation) the ILP's own plan, when lana's measured selection shipped another plan of the pool "
                "(issue 26): what the selection adds over the objective alone.",
            ),
            (
                "greedy",
                "(ablation) from the teacher, repeatedly the swap with the least score added per ms saved, until "
                "under lana's predicted budget.",
            ),
            (
                "random",
                "(ablation) the best, by predicted score, of N random plans of the same library under the same "
                "predicted budget.",
            ),
        )
    ]
    lines += [
        "",
        (
            "Competitors (prune, fastnas, sibling) are matched to the *budget* (a factor of the teacher's latency, "
            "landing in [0.95, 1.0] of it; each bisection step timed paired with the teacher by `lana.paired`, "
            "where results before 23c59c7 divided two medians of interleaved rounds) and cached apart from lana. A "
            "comparison counts when the other model is within ±5% of lana's latency in the final pass (or lana is "
            "both faster and more accurate), and lana itself within [0.95, 1.0] of the budget; else it is "
            "*undetermined*. These two ratios are timed paired where a result has them (each model alternating "
            "with lana's student, and lana's student with the teacher, in short blocks until the median ratio's "
            "95% interval is within ±1%: `lana.paired`); older results divide the interleaved pass's medians. "
            "lana, the best competitor and uniform slim get several fine-tuning seeds (mean ± std); a **win** is a mean difference ≥ 1 point whose 95% interval (Welch) excludes zero; an interval "
            "across zero is a **tie**, one below zero a **loss**."
        ),
    ]
    lines += [
        "",
        (
            "Budgets are factors of the teacher's latency (each workload says which timing). Latency: torch eager on "
            "the CPU, median (and interquartile range) over interleaved rounds of 20 calls, all models of a workload "
            "in one pass. `before FT`: top-1 before fine-tuning, on the first test images (the correlation set). "
            "`search s`: ILP solve + assembly (lana), sampling (random, greedy) or latency bisection (the others)."
        ),
        "",
    ]
    for result in results:
        w = result["workload"]
        teacher = _by(result, "teacher", "-")
        stem = section_file(result).removesuffix(".json")  # W2, a later section W2.2
        png = path.with_name(f"{path.stem}-{stem}.png")
        plot_workload(result, png)
        lines += [
            (
                f"## {_label(result)}: {w['model']}{' (ImageNet-pretrained)' if w['pretrained'] else ''} on {w['dataset']} "
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
                f"lana: {w['build_epochs']:g} epoch(s) of block distillation + {w['finetune_epochs']:g} of fine-tuning, "
                f"every other method {w['build_epochs'] + w['finetune_epochs']:g} epoch(s) of KD fine-tuning; "
                f"training images per stage: {w['limit'] or 'all'}; "
                f"workload wall time {result['wall_s'] / 60:.1f} min."
            ),
            "",
            *_provenance_lines(result),
            *_section_lines(result),
            *_failure_lines(result),
            "",
            "### Verdicts",
            "",
            *verdict_table(result),
            "",
            "### Results",
            "",
            *_results_table(result),
            "",
            f"![{_label(result)}: top-1 vs measured latency]({png.name})",
            "",
            *(["### Longer training (issue 25 item 4)", "", *longer, ""] if (longer := longer_lines(result)) else []),
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
            fronts_png = plot_fronts(result, path.with_name(f"{path.stem}-{stem}-families.png"))
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
                f"![{_label(result)}: predicted fronts with and without the families of issue 10]({fronts_png.name})",
                "",
            ]
    lines += ["## Goals", "", *goals(results), ""]
    _atomic_write(path, "\n".join(lines))
    return path
