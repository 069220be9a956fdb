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

Parts from different machines, or whose teacher came out differently (a training run is only
reproducible on the same CPU: W2's seeded teacher reached 87.05% on an Intel Xeon and 87.86% on an
AMD EPYC from the same code), are not one experiment and are never merged. ``--apart`` keeps them
as *sections* of the workload instead (:func:`sections`), when code, settings and packages agree
and no budget is in two: each section is a whole result (its own teacher, library, CPU and timing
pass) and the report renders each under its own heading, so every comparison stays within one run.
"""

from __future__ import annotations

import copy

import numpy as np

__all__ = ["additivity", "merge", "section_file", "sections"]

# what must be equal for two runs to be parts of one experiment (the machine's among them), and
# for two runs to be sections of one workload (made by the same code, with the same settings)
_MACHINE = ("cpu", "cores")
_SAME = ("code", *_MACHINE, "versions", "python", "smoke", "train_images")
_SAME_CODE = tuple(k for k in _SAME if k not in _MACHINE)
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


def _check(parts: list[dict], apart: bool = False) -> None:
    """Raise ValueError naming the first difference that makes ``parts`` different experiments
    (``apart``: that makes them other than sections of one workload: code, settings, packages)."""
    first = parts[0]
    name = first["workload"]["name"]
    for i, part in enumerate(parts[1:], start=2):
        if part["workload"]["name"] != name:
            raise ValueError(f"part {i} is workload {part['workload']['name']}, part 1 is {name}: merge one workload")
        checks = [(key, first.get(key), part.get(key)) for key in (_SAME_CODE if apart else _SAME)]
        checks.append(("workload settings", _workload_settings(first), _workload_settings(part)))
        if not apart:
            checks.append(("teacher and library", _teacher_and_library(first), _teacher_and_library(part)))
        for what, a, b in checks:
            if a != b:
                hint = (
                    "Rerun the missing budgets with the code and settings of the other parts."
                    if apart or what not in (*_MACHINE, "teacher and library")
                    else "Rerun the missing budgets on the machine of the other parts, or keep each part as its own "
                    "section of the workload (--apart)."
                )
                raise ValueError(
                    f"{name}: part {i} differs from part 1 in {what} ({b!r} vs {a!r}): they are not one experiment. "
                    + hint
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
    merged.pop("section", None)  # a section of an earlier split, merged whole now
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


def _differences(first: dict, part: dict) -> list[str]:
    """What sets ``part`` apart from ``first``: the machine, the teacher, the library."""
    found = [f"{key} {part.get(key)!r} vs {first.get(key)!r}" for key in _MACHINE if part.get(key) != first.get(key)]
    mine, theirs = _teacher_and_library(part), _teacher_and_library(first)
    found += [f"{key} {mine[key]!r} vs {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]
    return found


def sections(parts: list[dict]) -> list[dict]:
    """``parts`` as sections of one workload: each a whole result of some budgets, ordered by the
    workload's first budget it holds, with ``section`` (``index``, ``of``, and ``apart``: how it
    differs from section 1).

    Raises:
        ValueError: fewer than two parts, parts made by other code or settings, or a budget in two.
    """
    if len(parts) < 2:
        raise ValueError(f"--apart needs two or more parts of one workload, got {len(parts)}")
    _check(parts, apart=True)
    order = _ordered(parts[0]["workload"]["name"], [b for p in parts for b in p["budgets"]],
                     lambda b: next(p["budgets"][b]["factor"] for p in parts if b in p["budgets"]))  # fmt: skip
    parts = sorted(parts, key=lambda p: min(order.index(b) for b in p["budgets"]))
    out = []
    for i, part in enumerate(parts, start=1):
        found = copy.deepcopy(part)
        found["section"] = {"index": i, "of": len(parts), "apart": _differences(parts[0], part) if i > 1 else []}
        out.append(found)
    return out


def section_file(result: dict) -> str:
    """The file name of ``result`` under ``bench/results``: ``W2.json``, a later section ``W2.2.json``."""
    name, index = result["workload"]["name"], (result.get("section") or {}).get("index", 1)
    return f"{name}.json" if index == 1 else f"{name}.{index}.json"
