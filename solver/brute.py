"""Exhaustive search: the reference the other backends are tested against (tiny models only)."""

from __future__ import annotations

import itertools
import math

from lana.solver import Model, Result

__all__ = ["solve_model", "MAX_PLANS"]

MAX_PLANS = 1_000_000  # ~5 s in pure Python; the tests use a few thousand


def solve_model(model: Model) -> Result:
    """Tries every plan; of the best, returns the first in lexicographic order."""
    count = math.prod(len(cost) for cost in model.cost)
    if count > MAX_PLANS:
        raise ValueError(f"brute force over {count} plans: more than {MAX_PLANS}")
    best, best_cost = None, math.inf
    for choice in itertools.product(*(range(len(cost)) for cost in model.cost)):
        feasible = all(sum(con.weights[l][c] for l, c in enumerate(choice)) <= con.limit for con in model.rows)
        if not feasible:
            continue
        cost = sum(model.cost[l][c] for l, c in enumerate(choice))
        if cost < best_cost:
            best, best_cost = choice, cost
    if best is None:
        return Result("infeasible")
    return Result("optimal", tuple(int(c) for c in best))
