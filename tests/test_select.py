"""The measured selection (issue 26): the pool of plans at a budget, and the plan kept."""

import numpy as np

from lana.problem import Problem
from lana.select import Contender, greedy_choice, plan_of, plan_pool, select_plan, uniform_choice


def _problem():
    """Three layers: teacher (10 ms), slim_w0.5 (5 ms), slim_w0.25 (3 ms), dw_k3 (2 ms); 1 ms fixed.
    The one-layer scores make dw_k3 look cheapest per ms saved (a sum that misleads)."""
    specs = (("teacher", "slim_w0.5", "slim_w0.25", "dw_k3"),) * 3
    latency = tuple(np.array([10.0, 5.0, 3.0, 2.0]) for _ in range(3))
    scores = tuple(np.array([0.0, 0.4, 1.2, 0.5]) for _ in range(3))
    counts = tuple(np.array([4, 2, 1, 1]) for _ in range(3))
    return Problem("m", "cpu-b1", "top1_drop", ("a", "b", "c"), specs, scores, {"cpu-b1": latency},
                   {"cpu-b1": 1.0}, counts, counts)  # fmt: skip


def test_uniform_takes_the_widest_width_that_fits():
    problem = _problem()
    assert uniform_choice(problem, 16.0) == ("uniform-w0.5", (1, 1, 1))
    assert uniform_choice(problem, 12.0) == ("uniform-w0.25", (2, 2, 2))
    assert uniform_choice(problem, 5.0) is None


def test_greedy_meets_the_budget_by_the_cheapest_moves():
    problem = _problem()
    choice = greedy_choice(problem, 16.0)
    assert problem.predicted_latency_ms(choice) <= 16.0 and greedy_choice(problem, 3.0) is None
    plan = plan_of(problem, choice, 16.0, "greedy")
    assert plan.predicted_latency_ms == problem.predicted_latency_ms(choice) and plan.solver == "greedy"


def _contender(source, top1, kl, ms):
    return Contender(source, None, top1, kl, ms)


def test_the_most_accurate_plan_within_the_measured_budget_is_kept():
    pool = [_contender("ilp", 80.0, 0.3, 9.0), _contender("greedy", 85.0, 0.2, 10.4),
            _contender("slim", 83.0, 0.25, 9.9), _contender("uniform-w0.5", 83.0, 0.2, 9.5)]  # fmt: skip
    assert select_plan(pool, 10.0).source == "uniform-w0.5"  # greedy is over; a tie in top-1 goes to the lower KL
    assert select_plan(pool, 10.0, noise=0.05).source == "greedy"  # within the table's noise
    assert select_plan(pool, 5.0).source == "ilp"  # none within: the fastest


def test_the_pool_holds_the_ilp_first_and_distinct_plans_under_the_budget(tiny_library):
    from lana.plan import SolveOptions, solve_library

    path, _ = tiny_library
    ilp = solve_library(path, "0.8x", SolveOptions(table="cpu-b1"))
    pool = plan_pool(path, ilp.budget_ms, SolveOptions(table="cpu-b1"), k=3, min_diff=1)
    assert pool[0][0] == "ilp" and pool[0][1].choices == ilp.choices
    assert len(pool) >= 3  # the next-best ILP plans (and greedy's, when it differs)
    assert len({plan.choices for _, plan in pool}) == len(pool)
    assert all(plan.predicted_latency_ms <= ilp.budget_ms + 1e-9 for _, plan in pool)
