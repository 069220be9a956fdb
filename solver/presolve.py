"""Exact reductions of the multiple-choice knapsack, done once in numpy before any backend runs.

Both only drop candidates that no optimal plan needs, so every backend still returns the optimum.
On random 50 x 200 libraries (bench/solver_bench.py, 15 budgets) dominance leaves ~570 of the
10,000 columns and the bounds ~100-200; HiGHS' median solve went from 0.22 s (whole model) and
0.20 s (dominance only) to 0.04 s.

1. `undominated`: a candidate no better than another on the score and on every constrained row.
2. `bound_reduced`: a candidate whose Lagrangian lower bound (first row relaxed with its optimal
   multiplier) exceeds the score of a known feasible plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["usable", "undominated", "bound_reduced", "take"]

_BISECTIONS = 60  # the multiplier to float precision: each halves the interval
_TOLERANCE = 1e-9  # a candidate is dropped only if its bound beats the incumbent by this much


def take(model, kept: Sequence[np.ndarray]):
    """The `Model` with only candidates ``kept[l]`` of each layer l (cuts included)."""
    from lana.solver import Constraint, Model

    def rows(constraints):
        return tuple(
            Constraint(con.name, tuple(w[k] for w, k in zip(con.weights, kept)), con.limit) for con in constraints
        )

    return Model(
        layers=model.layers,
        cost=tuple(c[k] for c, k in zip(model.cost, kept)),
        constraints=rows(model.constraints),
        cuts=rows(model.cuts),
    )


def usable(model) -> list[np.ndarray]:
    """Per layer, the candidates with finite numbers everywhere (NaN: not trained or measured)."""
    kept = []
    for l, cost in enumerate(model.cost):
        finite = np.isfinite(cost)
        for con in model.constraints:
            finite &= np.isfinite(con.weights[l])
        if not finite.any():
            raise ValueError(f"layer {model.layers[l]} has no candidate with finite numbers")
        kept.append(np.flatnonzero(finite))
    return kept


def undominated(model, n_dominators: int = 1) -> list[np.ndarray]:
    """Per layer, the candidates dominated by fewer than ``n_dominators`` others.

    e dominates d if it is <= on the cost and on every constraint row (not the cuts), and < once or
    equal everywhere with e < d (of identical candidates the first stays). With k plans to differ
    from (cuts), ``n_dominators = k + 1`` keeps the optimum: a dropped candidate keeps >= k + 1
    kept dominators (the first k + 1 of them in a topological order have fewer than that each), so
    one of them is used by none of the k plans at that layer and can replace it.
    """
    kept = []
    for l, cost in enumerate(model.cost):
        values = np.stack([cost] + [con.weights[l] for con in model.constraints])
        if len(values) == 2 and n_dominators == 1:
            kept.append(_front_2d(values[1], values[0]))
            continue
        n = values.shape[1]
        less_equal = np.ones((n, n), dtype=bool)  # less_equal[e, d]: e <= d everywhere
        for row in values:
            less_equal &= row[:, None] <= row[None, :]
        equal = less_equal & less_equal.T
        first = np.less.outer(np.arange(n), np.arange(n))  # first[e, d]: e < d
        dominates = (less_equal & ~equal) | (equal & first)
        kept.append(np.flatnonzero(dominates.sum(axis=0) < n_dominators))
    return kept


def _front_2d(weight: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """`undominated` for one row and one dominator, in O(n log n) instead of O(n^2): in the order
    (weight, cost, index) a candidate is dominated iff an earlier one costs no more."""
    order = np.lexsort((np.arange(len(cost)), cost, weight))
    sorted_cost = cost[order]
    earlier_min = np.minimum.accumulate(np.concatenate([[np.inf], sorted_cost[:-1]]))
    return np.sort(order[sorted_cost < earlier_min])


def bound_reduced(model) -> tuple[list[np.ndarray], tuple[int, ...]] | None:
    """Per layer, the candidates whose Lagrangian bound does not exceed a feasible plan's cost.

    The first constraint (the budget's latency row) is relaxed into the objective with multiplier
    lam >= 0; then any plan taking candidate c at layer l costs at least
    ``bound(lam) + cost[l][c] + lam * w[l][c] - min_c' (cost[l][c'] + lam * w[l][c'])``. lam is
    found by bisection (for one row its dual equals the LP relaxation's bound), and a feasible
    plan by rounding to the feasible side of lam and a greedy pass.

    Returns:
        The kept candidates of each layer, and that feasible plan in their indices (a warm start);
        or None when it cannot help: no constraint, cuts present, or no feasible plan found.
    """
    if not model.constraints or model.cuts:
        return None
    cost, rows = _padded(model.cost, np.inf), [_padded(c.weights, 0.0) for c in model.constraints]
    limits = np.array([c.limit for c in model.constraints])
    layer = np.arange(len(model.cost))
    relaxed, limit = rows[0], limits[0]
    if relaxed.min(axis=1, initial=np.inf, where=np.isfinite(cost)).sum() > limit:
        return None  # infeasible: the backend will say so

    def argmin(lam):
        return np.argmin(cost + lam * relaxed, axis=1)

    low, high = 0.0, 0.0
    if relaxed[layer, argmin(0.0)].sum() > limit:
        high = 1.0
        while relaxed[layer, argmin(high)].sum() > limit:
            low, high = high, 2.0 * high
            if high > 1e300:
                return None
        for _ in range(_BISECTIONS):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if relaxed[layer, argmin(mid)].sum() > limit else (low, mid)
    lam = high  # argmin(high) meets the relaxed row
    reduced = cost + lam * relaxed
    best = reduced.min(axis=1)
    bound = best.sum() - lam * limit
    choice = _improved(argmin(lam), cost, rows, limits)
    if choice is None:
        return None
    incumbent = cost[layer, choice].sum()
    margin = _TOLERANCE * max(1.0, abs(incumbent), lam * abs(limit))  # float error of bound
    keep = bound + (reduced - best[:, None]) <= incumbent + margin
    kept = [np.flatnonzero(keep[l, : len(c)]) for l, c in enumerate(model.cost)]
    return kept, tuple(int(np.searchsorted(k, c)) for k, c in zip(kept, choice))


def _improved(choice, cost, rows, limits):
    """Greedy: while some single swap lowers the cost and keeps every row within its limit, make
    the best such swap. None if ``choice`` breaks a row other than the first."""
    layer = np.arange(len(choice))
    slack = limits - np.array([row[layer, choice].sum() for row in rows])
    if (slack < 0).any():
        return None
    choice = choice.copy()
    while True:
        gain = cost - cost[layer, choice][:, None]  # < 0 is better
        fits = gain < 0
        for row, s in zip(rows, slack):
            fits &= row - row[layer, choice][:, None] <= s
        if not fits.any():
            return choice
        l, c = np.unravel_index(np.argmin(np.where(fits, gain, 0.0)), gain.shape)
        slack -= np.array([row[l, c] - row[l, choice[l]] for row in rows])
        choice[l] = c


def _padded(arrays, fill: float) -> np.ndarray:
    """Ragged per-layer arrays as one (layers, max candidates) array, padded with ``fill``."""
    out = np.full((len(arrays), max(len(a) for a in arrays)), fill, dtype=np.float64)
    for l, a in enumerate(arrays):
        out[l, : len(a)] = a
    return out
