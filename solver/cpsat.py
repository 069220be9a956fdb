"""OR-Tools CP-SAT: an exact solver over integers, so costs and rows are scaled to integers.

Scaling, and the error it allows (L layers):

* Cost: ``round(cost * COST_UNITS / max|cost|)``. Each term moves by <= max|cost| / (2 COST_UNITS),
  so the plan returned costs at most ``L * max|cost| / COST_UNITS`` more than the optimum over
  the same plans (5e-11 for 50 layers and scores <= 1).
* A row with integer weights (params, MACs, the ``differ_{i}`` cuts) is exact. Any other row
  (latency in ms) gets ``ceil(w * ROW_UNITS)`` and ``floor(limit * ROW_UNITS)``: every plan CP-SAT
  accepts meets the true row, and a plan that meets it is refused only if its slack is below
  ``L / ROW_UNITS`` (5e-11 ms over 50 layers). The units are this fine because the optimum of a
  knapsack sits close to its budget: with 1e-6 ms units, a random 50 x 200 library already lost
  its optimum (slack 1.4e-5 ms) to the rounding.

Both scales shrink when a sum of scaled terms could pass 2^53 (so that every sum is exact in
float64 and far from int64 overflow), and the error bounds grow by the same factor.
OR-Tools bundles its own HiGHS: never import this module into a process that loaded highspy.
"""

from __future__ import annotations

import math

import numpy as np

from lana.solver import Model, Result, SolverError

__all__ = ["solve_model", "COST_UNITS", "ROW_UNITS"]

COST_UNITS = 10**12  # max |cost| becomes 1e12
ROW_UNITS = 10**12  # 1e-12 of a row's unit: 1 fs for latency in ms
_SAFE = 2.0**53  # largest sum of scaled terms that stays exact


def solve_model(model: Model) -> Result:
    """Solves the `Model` exactly (up to the scaling above) with CP-SAT."""
    from ortools.sat.python import cp_model

    # Data: integer costs and rows
    n_layers = len(model.layers)
    cost_max = max(float(np.abs(c).max()) for c in model.cost) or 1.0  # all zero: any scale
    cost_scale = min(COST_UNITS / cost_max, _SAFE / (n_layers * cost_max))
    cost = [np.rint(c * cost_scale).astype(np.int64) for c in model.cost]
    rows = [(con.name, *_integer_row(con.weights, con.limit, n_layers)) for con in model.rows]

    model_cp = cp_model.CpModel()

    # Variables: x[l, c] = 1 if layer l takes candidate c
    x = {(l, c): model_cp.new_bool_var(f"x[{l},{c}]") for l, cs in enumerate(cost) for c in range(len(cs))}

    def weighted(weights):
        pairs = [(x[l, c], int(w[c])) for l, w in enumerate(weights) for c in range(len(w)) if w[c] != 0]
        return cp_model.LinearExpr.weighted_sum([p[0] for p in pairs], [p[1] for p in pairs])

    # Constraints: one_of_{layer}, then the knapsack rows
    for l, layer in enumerate(model.layers):
        model_cp.add_exactly_one(x[l, c] for c in range(len(cost[l]))).with_name(f"one_of_{layer}")
    for name, weights, limit in rows:
        model_cp.add(weighted(weights) <= limit).with_name(name)

    # Objective: minimise the summed (scaled) score
    model_cp.minimize(weighted(cost))

    # Solve, from the presolve's feasible plan if there is one
    if model.start is not None:
        for l, c in enumerate(model.start):
            model_cp.add_hint(x[l, c], True)
    solver = cp_model.CpSolver()
    status = solver.solve(model_cp)

    # Status
    if status == cp_model.INFEASIBLE:
        return Result("infeasible")
    if status != cp_model.OPTIMAL:
        raise SolverError(f"CP-SAT stopped with status {solver.status_name(status)}")

    # Solution: the candidate with x[l, c] = 1 in each layer
    return Result(
        "optimal", tuple(next(c for c in range(len(cs)) if solver.boolean_value(x[l, c])) for l, cs in enumerate(cost))
    )


def _integer_row(weights, limit: float, n_layers: int):
    """A row as integers: exact if its weights are integers, else rounded conservatively."""
    peak = max(max(float(np.abs(w).max()) for w in weights), abs(limit), 1.0)
    if all(np.array_equal(w, np.round(w)) for w in weights) and peak * n_layers < _SAFE:
        return [w.astype(np.int64) for w in weights], math.floor(limit)
    scale = min(ROW_UNITS, _SAFE / (n_layers * peak))
    return [np.ceil(w * scale).astype(np.int64) for w in weights], math.floor(limit * scale)
