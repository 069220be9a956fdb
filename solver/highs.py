"""HiGHS through highspy: the default backend.

The model goes in as arrays (one call per block of columns or rows), not one Python object per
variable: 50 x 200 binaries took 0.11 s to build through highspy's expression API, 3 ms as arrays.
"""

from __future__ import annotations

import numpy as np

from lana.solver import Model, Result, SolverError, quiet_stdout

__all__ = ["solve_model"]

_OPTIONS = {
    "output_flag": False,
    "threads": 1,  # no thread pool start-up: after the presolve the model has ~100 columns
    # exact: the default relative gap (1e-4) may stop short of the optimum; with the costs scaled
    # to max |cost| = 1 (below), an absolute gap of 1e-9 is 1e-9 * max |score| in score units
    "mip_rel_gap": 0.0,
    "mip_abs_gap": 1e-9,
    # the optimum of a knapsack sits within ~1e-5 ms of its budget: with the default tolerances
    # (1e-6) HiGHS could take a plan over the budget that the other backends refuse
    "mip_feasibility_tolerance": 1e-9,
    "primal_feasibility_tolerance": 1e-9,
}


def solve_model(model: Model) -> Result:
    """Solves the multiple-choice knapsack `Model` exactly with HiGHS' branch and cut."""
    import highspy

    # Data: column offset[l] + c is x[l, c]
    sizes = np.array([len(cost) for cost in model.cost])
    offset = np.concatenate([[0], np.cumsum(sizes)])
    num_col = int(offset[-1])
    columns = np.arange(num_col, dtype=np.int32)

    with quiet_stdout():
        highs = highspy.Highs()
    for name, value in _OPTIONS.items():
        _ok(highs.setOptionValue(name, value), f"set option {name}")

    # Variables: x[l, c] = 1 if layer l takes candidate c
    _ok(highs.addVars(num_col, np.zeros(num_col), np.ones(num_col)), "add the variables")
    _ok(
        highs.changeColsIntegrality(num_col, columns, np.full(num_col, highspy.HighsVarType.kInteger, dtype=np.uint8)),
        "make the variables binary",
    )

    # Constraints: one_of_{layer}: sum_c x[l, c] == 1
    num_layer = len(model.layers)
    _ok(
        highs.addRows(
            num_layer,
            np.ones(num_layer),
            np.ones(num_layer),
            num_col,
            offset[:-1].astype(np.int32),
            columns,
            np.ones(num_col),
        ),
        "add one_of rows",
    )
    # ... and each knapsack row (latency_{table}, params, macs, differ_{i}): sum w x <= limit
    for con in model.rows:
        weights = np.concatenate(con.weights).astype(np.float64)
        nonzero = np.flatnonzero(weights).astype(np.int32)
        _ok(highs.addRow(-highspy.kHighsInf, con.limit, len(nonzero), nonzero, weights[nonzero]), f"add row {con.name}")
    names = [f"one_of_{layer}" for layer in model.layers] + [c.name for c in model.rows]
    for row, name in enumerate(names):
        _ok(highs.passRowName(row, name), f"name row {name}")

    # Objective: minimise the summed score; scaled to max |cost| = 1 (the argmin is the same), as
    # KL scores of ~1e-6 trip HiGHS' "excessively small costs" and its absolute tolerances
    cost = np.concatenate(model.cost).astype(np.float64)
    _ok(highs.changeColsCost(num_col, columns, cost / (float(np.abs(cost).max()) or 1.0)), "set the objective")

    # Solve, from the presolve's feasible plan if there is one
    if model.start is not None:
        start = np.zeros(num_col)
        start[offset[:-1] + np.asarray(model.start)] = 1.0
        _ok(highs.setSolution(num_col, columns, start), "set the start")
    _ok(highs.run(), "solve")

    # Status
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return Result("infeasible")
    if status != highspy.HighsModelStatus.kOptimal:
        raise SolverError(f"HiGHS stopped with model status {highs.modelStatusToString(status)}")

    # Solution: the candidate with x[l, c] = 1 in each layer
    values = np.asarray(highs.getSolution().col_value)
    choice = tuple(int(np.argmax(values[offset[l] : offset[l + 1]])) for l in range(num_layer))
    return Result("optimal", choice)


def _ok(status, what: str) -> None:
    """Every HiGHS call returns a HighsStatus: an error stops here (a warning is fine)."""
    import highspy

    if status == highspy.HighsStatus.kError:
        raise SolverError(f"HiGHS failed to {what}")
