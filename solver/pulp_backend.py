"""PuLP, with its bundled CBC (``cbc``) or with HiGHS through highspy (``pulp-highs``).

PuLP builds one Python object per variable and, for CBC, writes an MPS file and runs the ``cbc``
binary: ~10x slower than `lana.solver.highs` on the same model, but a second, independent MIP code.
"""

from __future__ import annotations

import warnings

from lana.solver import Model, Result, SolverError, quiet_stdout

__all__ = ["solve_cbc", "solve_highs"]

# the optimum of a knapsack sits within ~1e-5 ms of its budget: with the default tolerances (1e-6
# and more) a MIP code could take a plan over the budget that the other backends refuse
_CBC_TOLERANCES = ["primalTolerance 1e-9", "integerTolerance 1e-9"]


def solve_cbc(model: Model) -> Result:
    """Solves the `Model` with PuLP's bundled CBC."""
    import pulp

    # exact: CBC's default relative gap is 1e-4 (see solve_highs for the scaling of the costs)
    with warnings.catch_warnings():
        # TODO(limit): PuLP 3.3 deprecates its bundled CBC (gone in PuLP 4: use COIN_CMD then)
        warnings.simplefilter("ignore", DeprecationWarning)
        engine = pulp.PULP_CBC_CMD(
            msg=False, gapRel=0.0, gapAbs=1e-9, warmStart=model.start is not None, options=_CBC_TOLERANCES
        )
    return _solve(model, engine, "CBC")


def solve_highs(model: Model) -> Result:
    """Solves the `Model` with PuLP's HiGHS interface (highspy under the hood)."""
    import pulp

    with quiet_stdout():  # HiGHS prints its banner from C++, before PuLP can turn output off
        return _solve(
            model,
            pulp.HiGHS(
                msg=False, gapRel=0.0, gapAbs=1e-9, mip_feasibility_tolerance=1e-9, primal_feasibility_tolerance=1e-9
            ),
            "HiGHS",
        )


def _solve(model: Model, engine, engine_name: str) -> Result:
    import pulp

    # Data: costs scaled to max |cost| = 1 (same argmin; KL scores of 1e-6 are below MIP tolerances)
    scale = max(float(abs(c).max()) for c in model.cost) or 1.0
    candidates = [range(len(cost)) for cost in model.cost]
    problem = pulp.LpProblem("lana", pulp.LpMinimize)

    # Variables: x[l, c] = 1 if layer l takes candidate c
    x = {(l, c): _binary(problem, f"x_{l}_{c}") for l, cs in enumerate(candidates) for c in cs}

    # Constraints: one_of_{layer}, then the knapsack rows (PuLP turns '-' in names into '_')
    for l, layer in enumerate(model.layers):
        problem += pulp.lpSum(x[l, c] for c in candidates[l]) == 1, f"one_of_{layer}"
    for con in model.rows:
        problem += (
            pulp.LpAffineExpression(
                [(x[l, c], float(w[c])) for l, w in enumerate(con.weights) for c in candidates[l] if w[c] != 0]
            )
            <= con.limit,
            con.name,
        )

    # Objective: minimise the summed score
    problem.setObjective(
        pulp.LpAffineExpression(
            [(x[l, c], float(cost[c]) / scale) for l, cost in enumerate(model.cost) for c in candidates[l]]
        )
    )

    # Solve, from the presolve's feasible plan if there is one (CBC only: PuLP's HiGHS ignores it)
    if model.start is not None:
        for (l, c), var in x.items():
            var.setInitialValue(1 if model.start[l] == c else 0)
    status = problem.solve(engine)

    # Status
    if status == pulp.LpStatusInfeasible:
        return Result("infeasible")
    if status != pulp.LpStatusOptimal or problem.sol_status != pulp.LpSolutionOptimal:
        raise SolverError(
            f"PuLP/{engine_name} stopped with status {pulp.LpStatus[status]} "
            f"(solution status {pulp.LpSolution.get(problem.sol_status)})"
        )

    # Solution: the candidate with x[l, c] = 1 in each layer
    return Result("optimal", tuple(max(cs, key=lambda c: x[l, c].varValue or 0.0) for l, cs in enumerate(candidates)))


def _binary(problem, name: str):
    """A binary variable of ``problem``: PuLP >= 3.3 attaches variables to the problem."""
    import pulp

    if hasattr(problem, "add_variable"):
        return problem.add_variable(name, 0, 1, cat=pulp.LpBinary)
    return pulp.LpVariable(name, 0, 1, cat=pulp.LpBinary)
