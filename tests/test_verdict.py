"""Seeds, intervals and verdicts of the benchmark (issue 25 item 5), on made-up rows."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.verdict import aggregate, budget_verdict, interval  # noqa: E402


def _row(method, top1, seed=0, ms=10.0, budget="0.5x"):
    return {"method": method, "budget": budget, "top1": top1, "seed": seed, "latency": {"t": {"median_ms": ms}}}


def _rows(lana, other, other_ms=9.8, lana_ms=9.8, method="prune"):
    teacher = {"method": "teacher", "budget": "-", "top1": 95.0, "latency": {"t": {"median_ms": 20.0}}}
    rows = [teacher] + [_row("lana", v, i, lana_ms) for i, v in enumerate(lana)]
    return aggregate(rows + [_row(method, v, i, other_ms) for i, v in enumerate(other)])


def test_aggregate_folds_seeds_into_mean_and_std():
    (row,) = [r for r in _rows([90.0, 91.0, 92.0], [1.0]) if r["method"] == "lana"]
    assert row["top1"] == pytest.approx(91.0) and row["top1_std"] == pytest.approx(1.0)
    assert row["top1_seeds"] == [90.0, 91.0, 92.0] and row["seeds"] == [0, 1, 2]


def test_welch_interval_matches_a_hand_computation():
    diff, low, high = interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # se = sqrt(1/3), df = 2, t(0.975, 2) = 4.3027
    assert diff == pytest.approx(2.0) and high - diff == pytest.approx(4.3027 * (1 / 3) ** 0.5, rel=1e-3)
    assert interval([1.0], [2.0, 3.0]) is None


@pytest.mark.parametrize(
    ("lana", "other", "verdict"),
    [
        ([92.0, 92.2, 92.1], [90.0, 90.1, 90.2], "win"),
        ([90.5, 90.6, 90.55], [90.0, 90.1, 90.05], "ahead (< 1 point)"),
        ([90.0, 91.0, 92.0], [90.5, 91.5, 90.0], "tie"),
        ([88.0, 88.1, 88.2], [90.0, 90.1, 90.2], "loss"),
    ],
)
def test_verdicts_follow_the_interval(lana, other, verdict):
    found = budget_verdict(_rows(lana, other), "0.5x", "t", 0.5)
    assert found["best"] == "prune" and found["verdict"] == verdict and found["lana_in_band"]


def test_an_unmatched_best_competitor_leaves_the_budget_undetermined():
    slower_better = _rows([92.0, 92.1, 92.2], [93.0, 93.1, 93.2], other_ms=11.0)
    assert budget_verdict(slower_better, "0.5x", "t", 0.5)["verdict"] == "undetermined"
    # lana faster and more accurate: the comparison counts although the latency is off by 12%
    dominated = _rows([92.0, 92.1, 92.2], [90.0, 90.1, 90.2], other_ms=11.0)
    assert budget_verdict(dominated, "0.5x", "t", 0.5)["verdict"] == "win"


def test_lana_off_its_budget_is_undetermined():
    over = _rows([92.0, 92.1, 92.2], [90.0, 90.1, 90.2], lana_ms=10.5, other_ms=10.5)
    found = budget_verdict(over, "0.5x", "t", 0.5)
    assert not found["lana_in_band"] and found["verdict"] == "undetermined"


def test_paired_ratios_of_the_final_pass_decide_over_its_medians():
    """The interleaved pass's medians put lana at 0.82 of its budget and the competitor at 1.3x
    lana (a burst of load, W2 at 1f71e5e); the paired ratios of the same pass say lana is at 0.98
    and the competitor at 1.02x: the verdict follows the paired ones, on the budget's table only."""
    rows = _rows([92.0, 92.1, 92.2], [93.0, 93.1, 93.2], other_ms=10.66, lana_ms=8.2)
    assert budget_verdict(rows, "0.5x", "t", 0.5)["verdict"] == "undetermined"
    for row in rows:
        if row["method"] == "lana":
            row["paired"] = {"table": "t", "vs_teacher": {"ratio": 0.49}}
        elif row["method"] == "prune":
            row["paired"] = {"table": "t", "vs_lana": {"ratio": 1.02}}
    found = budget_verdict(rows, "0.5x", "t", 0.5)
    assert found["lana_vs_budget"] == pytest.approx(0.98) and found["lana_in_band"]
    assert found["verdict"] == "loss" and found["comparisons"][0]["latency_ratio"] == pytest.approx(1.02)
    for row in rows:  # timed paired on another table: the medians of this one stand
        row.get("paired", {})["table"] = "other"
    assert budget_verdict(rows, "0.5x", "t", 0.5)["verdict"] == "undetermined"
