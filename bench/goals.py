"""The goals table of ``BENCHMARKS.md`` (issues 8, 14, 15, 16, 25 and 26): each goal met or not,
with the numbers behind the verdict, computed from the run's results (nothing here is measured)."""

from __future__ import annotations

from bench.report import _by, _folded, _interval, _label, _num, verdicts

__all__ = ["goals"]


def goals(results: list[dict]) -> list[str]:
    """The goals (issues 8, 14 and 15) as a table: met or not, with the numbers behind each verdict."""
    lines = ["| goal | workload | result | met |", "|---|---|---|---|"]
    for result in results:
        w, name = result["workload"], _label(result)
        for budget, found in verdicts(result).items():  # issue 25: a win at every budget
            if found is None:
                why = (
                    "infeasible for lana's library" if "infeasible" in result["budgets"].get(budget, {}) else "not run"
                )
                lines.append(f"| a win over the best competitor at {budget} | {name} | {why} | no |")
                continue
            best = next((c for c in found["comparisons"] if c["other"] == found["best"]), None)
            detail = (
                f"{found['verdict']}: {best['diff']:+.2f} vs {best['other']} {_interval(best)}, lana at "
                f"{found['lana_vs_budget']:.3f} of the budget"
                if best
                else found["verdict"]
            )
            met = "yes" if found["verdict"] == "win" else "no"
            lines.append(f"| a win over the best competitor at {budget} | {name} | {detail} | {met} |")
        lines += _plan_goals(result)
        cal = result["library"].get("calibration")
        if cal:
            target = 0.8 if w["pretrained"] else 0.9  # issue 15: W2's library (pretrained) 0.8, W1 0.9
            rho = cal["spearman_calibrated"]
            lines.append(
                f"| held-out Spearman of the calibrated score ≥ {target} | {name} | {_num(rho)} "
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
                f"| calibration ≤ 15% of the library's build | {name} | {share:.1f}% ({cal['seconds']:.0f} s) "
                f"| {'yes' if share <= 15 else 'no'} |"
            )
        lana = _by(result, "lana", "0.5x")
        if w["pretrained"] and lana and lana.get("top1_before_ft") is not None:
            before = lana["top1_before_ft"]
            lines.append(
                f"| lana's 0.5x student ≥ 70% before fine-tuning | {name} | {before:.2f}% | "
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
                f"| budget on {b1}: ≥ 3x at {b1} within 0.5 point | {name} | {best['budget']}: {-loss:+.2f} points, "
                f"{best['speedup'][b1]:.2f}x {b1} | {'yes' if loss <= 0.5 and best['speedup'][b1] >= 3 else 'no'} |"
            )
        goal = f"≤ 0.5 point loss at ≥ 3x ({b1}) and ≥ 2x ({big})"
        close = [r for r in result["rows"] if r["method"] == "lana" and teacher["top1"] - r["top1"] <= 0.5]
        if close:
            fastest = max(close, key=lambda r: r["speedup"][big])
            met = fastest["speedup"][b1] >= 3 and fastest["speedup"][big] >= 2
            lines.append(
                f"| {goal} | {name} | {fastest['budget']}: {fastest['top1'] - teacher['top1']:+.2f} points, "
                f"{fastest['speedup'][b1]:.2f}x {b1}, {fastest['speedup'][big]:.2f}x {big} | {'yes' if met else 'no'} |"
            )
        else:
            nearest = max((r for r in result["rows"] if r["method"] == "lana"), key=lambda r: r["top1"], default=None)
            detail = (
                f"closest {nearest['budget']}: {nearest['top1'] - teacher['top1']:+.2f} points"
                if nearest
                else "no lana row"
            )
            lines.append(f"| {goal} | {name} | no lana student within 0.5 points ({detail}) | no |")
    return lines


def _ilp_plan(result: dict, budget: str) -> dict | None:
    """The ILP's own plan at ``budget``: the ``ilp`` row, or lana's when its selection kept the ILP's."""
    lana = _by(result, "lana", budget)
    own = _by(result, "ilp", budget)
    if own is None and lana is not None and (lana.get("selection") or {}).get("chosen", "ilp") == "ilp":
        return lana
    return own


def _plan_goals(result: dict) -> list[str]:
    """Issue 26's goals: the ILP's own plan >= uniform slim and greedy after fine-tuning, and lana's
    student >= those and the ILP's plan before and after, at every budget (ties count only when narrow)."""
    from bench.verdict import not_losing

    w, name = result["workload"], _label(result)
    result = {**result, "rows": _folded(result["rows"])}
    lines = []
    goals = [("lana", other) for other in ("uniform_slim", "greedy", "ilp")]
    goals += [("ilp", other) for other in ("uniform_slim", "greedy")]
    for mine, other in goals:
        after, before = [], []
        for budget in w["budgets"]:
            row = _ilp_plan(result, budget) if mine == "ilp" else _by(result, mine, budget)
            theirs = _by(result, other, budget)
            if row is None or theirs is None or row is theirs:
                continue
            if row.get("plan") and row.get("plan") == theirs.get("plan"):  # one plan, two rules: nothing to rank
                after.append((budget, True, "the same plan"))
                continue
            after.append((budget, *not_losing(row, theirs)))
            if row.get("top1_before_ft") is not None and theirs.get("top1_before_ft") is not None:
                gap = row["top1_before_ft"] - theirs["top1_before_ft"]
                before.append((budget, gap >= 0, f"{gap:+.2f}"))
        who = "the ILP's own plan" if mine == "ilp" else "lana"
        for when, found in (("after", after), ("before", before)):
            if found and not (mine == "ilp" and when == "before"):
                text = "; ".join(f"{b}: {t}" for b, _, t in found)
                met = "yes" if all(ok for _, ok, _ in found) else "no"
                lines.append(f"| {who} ≥ {other} {when} fine-tuning at every budget | {name} | {text} | {met} |")
    return lines
