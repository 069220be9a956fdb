"""One workload's result from several runs of its budgets (issue 25 item 6).

A workload's four budgets cost more than one session of a 2-core machine (W2: teacher and library
~35 min, each budget 35-70 min), and a session's caches do not outlive it. So a workload may run in
parts, each part some of its budgets, and be merged here into the one ``W*.json`` the report
renders, but only when the parts are the same experiment: the same source digest for every stage
(teacher, library, lana, competitors), the same workload settings apart from the budgets, the same
CPU model and package versions, and the same teacher and library (a rebuild from the same code must
have reproduced them: their top-1 and calibration are compared). Each budget keeps the rows of the
part that ran it, timed in that part's final interleaved pass against that part's teacher: every
comparison the report makes is within one budget, so within one pass. The merged result lists the
parts (commit, finish time, load average, wall time, command) so that the report names each.

``python3 -m bench --merge A.json B.json [--results DIR]`` writes ``DIR/<workload>.json``.
"""

from __future__ import annotations

import copy

import numpy as np

__all__ = ["additivity", "merge"]

# what must be equal for two runs to be parts of one experiment
_SAME = ("code", "cpu", "cores", "versions", "python", "smoke", "train_images")
# the workload's settings, apart from which budgets a part ran
_BUDGET_ONLY = ("budgets",)


def _workload_settings(part: dict) -> dict:
    return {k: v for k, v in part["workload"].items() if k not in _BUDGET_ONLY}


def _teacher_and_library(part: dict) -> dict:
    """What identifies the experiment's teacher and library, rebuilt or not."""
    cal = part["library"].get("calibration") or {}
    return {
        "teacher top-1": part["teacher"]["top1"],
        "teacher row top-1": next(r["top1"] for r in part["rows"] if r["method"] == "teacher"),
        "library layers": part["library"]["layers"],
        "library candidates": part["library"]["candidates"],
        "calibration samples": cal.get("samples"),
        "calibration spearman": cal.get("spearman_calibrated"),
    }


def _check(parts: list[dict]) -> None:
    """Raise ValueError naming the first difference that makes ``parts`` different experiments."""
    first = parts[0]
    name = first["workload"]["name"]
    for i, part in enumerate(parts[1:], start=2):
        if part["workload"]["name"] != name:
            raise ValueError(f"part {i} is workload {part['workload']['name']}, part 1 is {name}: merge one workload")
        checks = [(key, first.get(key), part.get(key)) for key in _SAME]
        checks.append(("workload settings", _workload_settings(first), _workload_settings(part)))
        checks.append(("teacher and library", _teacher_and_library(first), _teacher_and_library(part)))
        for what, a, b in checks:
            if a != b:
                raise ValueError(
                    f"{name}: part {i} differs from part 1 in {what} ({b!r} vs {a!r}): they are not one experiment. "
                    "Rerun the missing budgets with the code, machine and settings of the other parts."
                )
    seen: dict[str, int] = {}
    for i, part in enumerate(parts, start=1):
        for budget in part["budgets"]:
            if budget in seen:
                raise ValueError(f"{name}: budget {budget} is in part {seen[budget]} and part {i}: keep one of them")
            seen[budget] = i


def additivity(groups: list[list[dict]], tables: list[str]) -> dict:
    """Predicted vs measured latency of the rows with a library prediction, per table; each group
    (one run's rows, or one budget's with the teacher as timed in its pass) has its relative errors
    against its own teacher, and the teacher's own error counts once."""
    from lana.latency_check import errors_vs_teacher

    errors = {}
    for t in tables:
        signed, relative = [], []
        for i, rows in enumerate(groups):
            rows = sorted((r for r in rows if r.get("predicted_ms") and t in r["predicted_ms"]),
                          key=lambda r: r["method"] != "teacher")  # fmt: skip
            predicted = [r["predicted_ms"][t] for r in rows]
            measured = [r["latency"][t]["median_ms"] for r in rows]
            # the teacher counts once (the first group's: the merged result's teacher row)
            signed += [
                100 * (p / m - 1) for p, m, r in zip(predicted, measured, rows) if i == 0 or r["method"] != "teacher"
            ]
            if len(rows) > 1 and rows[0]["method"] == "teacher":
                relative += list(errors_vs_teacher(predicted, measured))
        if not signed:
            continue
        errors[t] = {
            "n": len(signed),
            "median_abs_pct": float(np.median(np.abs(signed))),
            "max_abs_pct": float(np.max(np.abs(signed))),
            "mean_signed_pct": float(np.mean(signed)),
        }
        if relative:
            errors[t]["relative_median_abs_pct"] = float(np.median(np.abs(relative)))
            errors[t]["relative_max_abs_pct"] = float(np.max(np.abs(relative)))
    return errors


def _ordered(name: str, budgets, factor) -> list[str]:
    """``budgets`` in the workload's own order (bench/workloads.py), others after by factor, largest first."""
    from bench.workloads import WORKLOADS, smoke

    base = name.removesuffix("-smoke")
    known = []
    if base in WORKLOADS:
        known = list((smoke(WORKLOADS[base]) if name != base else WORKLOADS[base]).budgets)
    return sorted(budgets, key=lambda b: (known.index(b) if b in known else len(known), -factor(b)))


def _summary(part: dict) -> dict:
    """What the report says of one part: its budgets, commit, time, load and command."""
    keys = ("commit", "finished", "load_average", "wall_s", "teacher_ms", "command")
    return {"budgets": list(part["budgets"]), **{k: part[k] for k in keys}}


def _teacher_latency(part: dict, budget: str) -> dict:
    """The teacher as timed in the pass that timed ``budget`` of ``part``."""
    return part["budgets"][budget].get("teacher_latency") or next(
        r["latency"] for r in part["rows"] if r["method"] == "teacher"
    )


def merge(parts: list[dict]) -> dict:
    """The one result of a workload run in ``parts`` (each a ``W*.json`` of some of its budgets).

    Args:
        parts: two or more results of one workload (a merged one among them); the first gives
            the teacher row and the library's analysis, every part the rows of its own budgets.

    Returns:
        The merged result: budgets in the workload's order, each with ``part`` (its index in
        the result's ``parts``) and ``teacher_latency`` (the teacher as timed in that part's
        pass); ``parts`` lists each part's budgets, commit, finish time, load average and wall
        time (a merged part's own parts, in their order).

    Raises:
        ValueError: fewer than two parts, parts of different experiments (code, settings, machine,
            teacher or library differ), or a budget in two parts.
    """
    from lana.correlation import spearman

    if len(parts) < 2:
        raise ValueError(f"merge needs two or more parts of one workload, got {len(parts)}")
    _check(parts)
    first = parts[0]
    # a part may itself be merged (W2.json plus a new session's budgets): its own parts are listed
    listed, owner, index = [], {}, {}
    for part in parts:
        for budget in part["budgets"]:
            owner[budget] = part
            index[budget] = len(listed) + (part["budgets"][budget].get("part", 0) if "parts" in part else 0)
        listed += part.get("parts") or [_summary(part)]
    order = _ordered(first["workload"]["name"], owner, lambda b: owner[b]["budgets"][b]["factor"])
    merged = copy.deepcopy(first)
    merged["workload"]["budgets"] = order
    # each budget's verdict sets lana's latency against the teacher timed in the same pass
    merged["budgets"] = {
        b: {**owner[b]["budgets"][b], "part": index[b], "teacher_latency": _teacher_latency(owner[b], b)} for b in order
    }
    merged["failures"] = {b: owner[b]["failures"][b] for b in order if b in owner[b].get("failures", {})}
    merged["rows"] = [r for r in first["rows"] if r["method"] == "teacher"] + [
        r for b in order for r in owner[b]["rows"] if r["budget"] == b
    ]
    # a stage built cold in some part reports that part's times
    for stage in ("teacher", "library"):
        built = next((p[stage] for p in parts if not p[stage].get("cached")), first[stage])
        merged[stage] = copy.deepcopy(built)
    points = [pt for part in parts for pt in part["correlation"]["points"]]
    before = [(pt["predicted_drop"], merged["correlation"]["teacher_top1"] - pt["top1_before_ft"]) for pt in points]
    merged["correlation"].update(
        points=points, n=len(points), spearman=spearman(*zip(*before)) if before else float("nan")
    )
    teacher = merged["rows"][0]
    groups = [
        [dict(teacher, latency=merged["budgets"][b]["teacher_latency"])]
        + [r for r in merged["rows"] if r["budget"] == b]
        for b in order
    ]
    merged["additivity"] = additivity(groups, first["workload"]["tables"])
    merged["wall_s"] = sum(p["wall_s"] for p in parts)
    merged["commit"] = ", ".join(dict.fromkeys(p["commit"] for p in listed))
    merged["finished"] = max(p["finished"] for p in listed)
    merged["command"] = "; ".join(dict.fromkeys(p["command"] for p in listed))
    merged["parts"] = listed
    return merged
