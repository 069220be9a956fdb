"""Seeds, intervals and verdicts (issue 25 items 3 and 5), computed from a workload's rows.

A method run with several fine-tuning seeds has one row per seed; :func:`aggregate` folds them
into one row whose ``top1`` is the mean (``top1_std``, ``top1_seeds`` beside it). A comparison is
the difference of two means with Welch's 95% interval; its verdict:

* **win**: lana ahead by >= 1 point and the interval excludes zero;
* **ahead (< 1 point)**: the interval excludes zero, the difference is under a point;
* **tie**: the interval contains zero (or one side has a single seed: no interval, a tie unless
  the gap is large, see :func:`compare`);
* **loss**: the interval lies below zero;
* **undetermined**: the best competitor is not at lana's latency (within +-5% in the final pass)
  and does not lose on both axes, or lana's own student missed [0.95, 1.0] x the budget.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

__all__ = ["Comparison", "aggregate", "budget_verdict", "compare", "interval", "not_losing"]

COMPETITORS = ("prune", "fastnas", "sibling")
MATCH = 0.05  # a competitor counts within +-5% of lana's measured latency
BUDGET_BAND = (0.95, 1.0)  # lana must land in this share of the budget, as measured
HALF_WIDTH = 0.5  # issue 26: a tie counts as not losing only when the interval is this narrow (points)
LONG = "_long"  # the longer setting's rows (issue 25 item 4): lana and the best competitor, trained longer


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (method, budget): the seed-0 row's fields, ``top1`` the mean over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"]), []).append(row)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r.get("seed", 0))
        first = dict(group[0])
        scores = [r["top1"] for r in group]
        first["top1_seeds"] = scores
        first["top1"] = statistics.fmean(scores)
        first["top1_std"] = statistics.stdev(scores) if len(scores) > 1 else None
        first["seeds"] = [r.get("seed", 0) for r in group]
        out.append(first)
    return out


def interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float] | None:
    """``(mean(a) - mean(b), low, high)``: Welch's ``level`` interval of the difference of means;
    None when either side has a single value (no variance to estimate)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


@dataclass(frozen=True)
class Comparison:
    """lana against one other method at one budget."""

    other: str
    diff: float
    low: float | None
    high: float | None
    seeds: tuple[int, int]  # (lana's, the other's)
    latency_ratio: float | None  # the other's measured latency over lana's, budget's table
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def compare(lana: dict, other: dict, latency_ratio: float | None, matched: bool = True) -> Comparison:
    """The verdict of ``lana`` (aggregated row) against ``other``; ``matched``: ``other`` counts
    at this latency (or lana is both faster and more accurate)."""
    a, b = lana["top1_seeds"], other["top1_seeds"]
    found = interval(a, b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    low, high = (found[1], found[2]) if found else (None, None)
    if not matched:
        verdict = "undetermined"
    elif found is None:
        verdict = "tie (one seed)"
    elif high < 0:
        verdict = "loss"
    elif low <= 0:
        verdict = "tie"
    elif diff >= 1:
        verdict = "win"
    else:
        verdict = "ahead (< 1 point)"
    return Comparison(other["method"], diff, low, high, (len(a), len(b)), latency_ratio, verdict)


def _paired(row: dict, key: str, table: str) -> float | None:
    """The ratio the final pass timed paired on ``table`` (:mod:`bench.final_pass`), if any."""
    paired = row.get("paired") or {}
    return paired[key]["ratio"] if paired.get("table") == table and key in paired else None


def _ratio(row: dict, lana: dict, table: str) -> float | None:
    """``row``'s latency over lana's on ``table``: paired where the final pass timed it so, else
    the ratio of the two medians (results made before paired timing)."""
    paired = _paired(row, "vs_lana", table)
    if paired is not None:
        return paired
    try:
        return row["latency"][table]["median_ms"] / lana["latency"][table]["median_ms"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def budget_verdict(rows: list[dict], budget: str, table: str, factor: float) -> dict | None:
    """lana against the best competitor at ``budget`` (aggregated ``rows``), and against every
    other method; None when lana has no row there.

    Returns:
        ``{"lana_vs_budget": measured / budget, "lana_in_band": bool, "best": method or None,
        "verdict": str, "comparisons": [Comparison dicts]}``; the budget is ``factor`` x the
        teacher as timed in the same final pass (paired with lana's student where it was).
    """
    lana = next((r for r in rows if r["method"] == "lana" and r["budget"] == budget), None)
    teacher = next((r for r in rows if r["method"] == "teacher"), None)
    if lana is None or teacher is None or "latency" not in lana:
        return None
    to_teacher = _paired(lana, "vs_teacher", table)
    if to_teacher is None:  # results made before paired timing: the two medians of the pass
        to_teacher = lana["latency"][table]["median_ms"] / teacher["latency"][table]["median_ms"]
    used = to_teacher / factor
    in_band = BUDGET_BAND[0] <= used <= BUDGET_BAND[1]
    comparisons = []
    for row in rows:
        if row["budget"] != budget or row["method"] in ("lana", "teacher") or row["method"].endswith(LONG):
            continue  # the longer setting's rows are compared among themselves (report.longer_lines)
        ratio = _ratio(row, lana, table)
        dominated = ratio is not None and ratio >= 1 and lana["top1"] >= row["top1"]  # lana faster and better
        matched = ratio is not None and (abs(ratio - 1) <= MATCH or dominated)
        comparisons.append(compare(lana, row, ratio, matched))
    competitors = [c for c in comparisons if c.other in COMPETITORS]
    best = min(competitors, key=lambda c: c.diff, default=None)  # the competitor closest to (or above) lana
    if best is None:
        verdict = "no competitor ran"
    elif not in_band:
        verdict = "undetermined"
    else:
        verdict = best.verdict
    return {
        "lana_vs_budget": used,
        "lana_in_band": in_band,
        "best": best.other if best else None,
        "verdict": verdict,
        "comparisons": [c.as_dict() for c in comparisons],
    }


def not_losing(row: dict, other: dict) -> tuple[bool, str]:
    """Issue 26's rule for aggregated ``row`` against ``other`` after fine-tuning: ``row`` does not
    lose when the 95% interval of the difference lies above zero, or straddles it with a
    half-width of at most 0.5 point; a wider tie, or a side with one seed, is not yet decided
    (run more seeds) and does not count. Returns (met, the figures behind it)."""
    found = interval(row["top1_seeds"], other["top1_seeds"])
    diff = statistics.fmean(row["top1_seeds"]) - statistics.fmean(other["top1_seeds"])
    if found is None:
        seeds = f"{len(row['top1_seeds'])} vs {len(other['top1_seeds'])} seeds"
        return False, f"{diff:+.2f} ({seeds}: no interval, run more seeds)"
    _, low, high = found
    half = (high - low) / 2
    text = f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"
    if low > 0:
        return True, f"{text} ahead"
    if high < 0:
        return False, f"{text} loss"
    if half <= HALF_WIDTH:
        return True, f"{text} tie, half-width {half:.2f}"
    return False, f"{text} tie, half-width {half:.2f} > {HALF_WIDTH}: run more seeds"
