"""The ILP of LANA: one candidate per layer, the least summed score under latency budgets.

Every backend solves the same `Model`, a multiple-choice knapsack::

    minimise    sum_{l,c} cost[l][c] * x[l, c]          x[l, c] = 1 if layer l takes candidate c
    subject to  sum_c x[l, c] == 1                       one_of_{layer}, for every layer
                sum_{l,c} w_k[l][c] * x[l, c] <= limit_k  latency_{table}, params, macs, differ_{i}

and returns a `Result`. One backend per module (`BACKENDS`), imported only when chosen: highspy's
HiGHS and OR-Tools' own copy of HiGHS can segfault when loaded into one process.

`solve` is the entry point: it builds the model from a `lana.problem.Problem`, drops candidates no
optimal plan needs (`lana.solver.presolve`), solves, re-checks the plan in float64, and on
infeasibility finds the minimum achievable latency and the binding constraints (`InfeasibleBudget`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "solve",
    "solve_model",
    "Solution",
    "Model",
    "Constraint",
    "Result",
    "BACKENDS",
    "InfeasibleBudget",
    "NoMorePlans",
    "SolverError",
    "LATENCY_SLACK",
]

# backend name -> (module, function); the function maps a Model to a Result
BACKENDS = {
    "highs": ("lana.solver.highs", "solve_model"),  # highspy, the default
    "cbc": ("lana.solver.pulp_backend", "solve_cbc"),  # PuLP with its bundled CBC
    "pulp-highs": ("lana.solver.pulp_backend", "solve_highs"),  # PuLP driving highspy
    "cpsat": ("lana.solver.cpsat", "solve_model"),  # OR-Tools CP-SAT, integer-scaled
    "brute": ("lana.solver.brute", "solve_model"),  # exhaustive, tiny models only (tests)
}

# a plan within 1e-9 (relative to the budget, at least 1e-9 ms) of a latency budget meets it: at
# exactly 1.0x the teacher's plan must fit, though its latency is summed in another order
LATENCY_SLACK = 1e-9
# relative slack allowed when re-checking a backend's plan (MIP feasibility tolerances are 1e-6)
_CHECK_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Constraint:
    """``sum_l weights[l][choice_l] <= limit``; ``name`` is the row name (``latency_cpu-b1``)."""

    name: str
    weights: tuple[np.ndarray, ...]
    limit: float


@dataclass(frozen=True)
class Model:
    """One multiple-choice knapsack: ``cost[l][c]`` for layer l, candidate c, and its rows.

    ``constraints`` are resources (latency, params, MACs); ``cuts`` are the rows that make a plan
    differ from earlier ones (presolve treats them differently); backends add both.
    """

    layers: tuple[str, ...]
    cost: tuple[np.ndarray, ...]
    constraints: tuple[Constraint, ...] = ()
    cuts: tuple[Constraint, ...] = ()
    start: tuple[int, ...] | None = None  # a feasible plan, if known: backends may warm-start

    @property
    def rows(self) -> tuple[Constraint, ...]:
        return self.constraints + self.cuts


@dataclass(frozen=True)
class Result:
    """What a backend returns: ``status`` is "optimal" (with ``choice``) or "infeasible"."""

    status: str
    choice: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Solution:
    """The optimum found by `solve`, in the problem's own candidate indices."""

    choice: tuple[int, ...]  # choice[l] indexes problem.specs[l]
    objective: float  # summed score: the predicted drop
    latency_ms: Mapping[str, float] = field(hash=False)  # table -> predicted ms (with fixed_ms)
    params: int
    macs: int
    solver: str
    solve_time_s: float  # presolve + build + solve; not the loading or an infeasibility diagnosis


class SolverError(RuntimeError):
    """A backend stopped without proving optimality or infeasibility, or broke a constraint."""


class NoMorePlans(RuntimeError):
    """Plans exist, but none differs enough from the plans to avoid (`solve(avoid=...)`)."""


class InfeasibleBudget(ValueError):
    """No plan meets the constraints.

    Attributes:
        table: the latency table whose budget cannot be met (the budget's own table when other
            constraints are the culprits).
        budget_ms: that table's budget, fixed part included.
        min_latency_ms: the least latency achievable on ``table`` under the other constraints, or
            None when the other constraints cannot be met whatever the latency.
        binding: names of the constraints that make it infeasible (``latency_cpu-b1``, ``params``).
    """

    exit_code = 2  # what `lana solve` and `lana pareto` exit with

    def __init__(
        self, message: str, *, table: str, budget_ms: float, min_latency_ms: float | None, binding: tuple[str, ...]
    ):
        super().__init__(message)
        self.table = table
        self.budget_ms = budget_ms
        self.min_latency_ms = min_latency_ms
        self.binding = binding


def solve_model(model: Model, solver: str = "highs") -> Result:
    """Solves a `Model` as given (no presolve) with one backend, imported here and not before."""
    if solver not in BACKENDS:
        raise ValueError(f"unknown solver {solver!r}: choose one of {', '.join(BACKENDS)}")
    module, function = BACKENDS[solver]
    result = getattr(importlib.import_module(module), function)(model)
    if result.status not in ("optimal", "infeasible"):
        raise SolverError(f"{solver} returned status {result.status!r}")
    return result


def solve(
    problem,
    budget_ms: float,
    *,
    solver: str = "highs",
    max_params: int | None = None,
    max_macs: int | None = None,
    extra_budgets_ms: Mapping[str, float] | None = None,
    avoid: Sequence[Sequence[int]] = (),
    min_diff: int = 1,
) -> Solution:
    """The plan of least summed score that meets every budget.

    Args:
        problem: a `lana.problem.Problem`; the budget applies to its ``table``.
        budget_ms: latency budget on ``problem.table``, fixed part included.
        solver: a key of `BACKENDS`.
        max_params: limit on the total params of the replaceable layers.
        max_macs: limit on their total MACs.
        extra_budgets_ms: budgets in ms on other tables (``{"gpu-b64": 1.5}``), met at once.
        avoid: plans (choice indices into ``problem.specs``) to differ from, each in at least
            ``min_diff`` layers.
        min_diff: see ``avoid``.

    Raises:
        InfeasibleBudget: no plan meets the constraints (raised only when ``avoid`` is empty).
        NoMorePlans: plans exist, but none differs enough from ``avoid``.
        SolverError: the backend failed, or returned a plan that breaks a constraint.
    """
    from lana.solver import presolve

    # Data: the full model, then only the candidates an optimal plan may need
    full = Model(
        layers=problem.layers,
        cost=problem.scores,
        constraints=_constraints(problem, budget_ms, max_params, max_macs, extra_budgets_ms or {}),
        cuts=tuple(_difference_cut(i, plan, len(problem.layers) - min_diff, problem) for i, plan in enumerate(avoid)),
    )
    start = time.perf_counter()
    kept = presolve.usable(full)
    model = presolve.take(full, kept)
    # with k plans to avoid, keep candidates that have fewer than k + 1 dominators
    kept = [k[i] for k, i in zip(kept, presolve.undominated(model, len(avoid) + 1))]
    model = presolve.take(full, kept)
    bounded = presolve.bound_reduced(model)
    if bounded is not None:
        kept = [k[i] for k, i in zip(kept, bounded[0])]
        model = dataclasses.replace(presolve.take(full, kept), start=bounded[1])

    result = solve_model(model, solver)
    solve_time_s = time.perf_counter() - start

    if result.status == "infeasible":
        if avoid:
            raise NoMorePlans(
                f"no plan meets the budgets and differs from each of the {len(avoid)}"
                f" plans found so far in >= {min_diff} layers"
            )
        raise _infeasible(problem, full, {problem.table: budget_ms, **(extra_budgets_ms or {})}, solver)
    choice = tuple(int(kept[l][c]) for l, c in enumerate(result.choice))
    _check(choice, full.rows, solver)
    return Solution(
        choice=choice,
        objective=problem.predicted_drop(choice),
        latency_ms={t: problem.predicted_latency_ms(choice, t) for t in problem.tables},
        params=problem.total_params(choice),
        macs=problem.total_macs(choice),
        solver=solver,
        solve_time_s=solve_time_s,
    )


def _constraints(problem, budget_ms, max_params, max_macs, extra_budgets_ms) -> tuple:
    """The named rows: latency on the budget's table, on the other budgeted tables, params, MACs."""
    if extra_budgets_ms.get(problem.table, budget_ms) != budget_ms:
        raise ValueError(f"two different budgets given for table {problem.table!r}")
    budgets = {problem.table: budget_ms, **extra_budgets_ms}
    rows = []
    for table, budget in budgets.items():
        if table not in problem.latency:
            raise ValueError(
                f"table {table!r} is not in the library: available tables are " + ", ".join(problem.tables)
            )
        slack = LATENCY_SLACK * max(1.0, abs(float(budget)))
        rows.append(
            Constraint(f"latency_{table}", problem.latency[table], float(budget) - problem.fixed_ms[table] + slack)
        )
    if max_params is not None:
        rows.append(Constraint("params", problem.params, float(max_params)))
    if max_macs is not None:
        rows.append(Constraint("macs", problem.macs, float(max_macs)))
    return tuple(rows)


def _difference_cut(i: int, plan: Sequence[int], max_same: int, problem) -> Constraint:
    """``differ_{i}``: ``sum_l x[l, plan_l] <= max_same``, i.e. differ from plan in >= L - max_same
    layers."""
    weights = tuple((np.arange(len(specs)) == c).astype(np.float64) for specs, c in zip(problem.specs, plan))
    return Constraint(f"differ_{i}", weights, float(max_same))


def _check(choice: Sequence[int], rows, solver: str) -> None:
    """Every backend's plan is re-checked in float64 before anyone sees it."""
    for con in rows:
        total = float(sum(con.weights[l][c] for l, c in enumerate(choice)))
        if total > con.limit + _CHECK_TOLERANCE * max(1.0, abs(con.limit)):
            raise SolverError(f"{solver} returned a plan that breaks {con.name}: {total:.9g} > {con.limit:.9g}")


def _infeasible(problem, full: Model, budgets: Mapping[str, float], solver: str) -> InfeasibleBudget:
    """Why no plan exists: the binding constraints, and the least achievable latency.

    ``budgets`` are the latency budgets in ms by table, as given (without `LATENCY_SLACK`).
    """
    from lana.solver import presolve

    kept = presolve.usable(full)

    def least(con):  # every layer at its smallest usable candidate
        return float(sum(w[k].min() for w, k in zip(con.weights, kept)))

    def describe(con):  # "latency_gpu-b1 <= 1.5000 ms" (fixed part included) or "params <= 1e+07"
        table = con.name.removeprefix("latency_")
        return f"{con.name} <= {budgets[table]:.4f} ms" if table in budgets else f"{con.name} <= {con.limit:.6g}"

    primary, others = full.constraints[0], full.constraints[1:]
    table, budget_ms, fixed_ms = problem.table, budgets[problem.table], problem.fixed_ms
    # 1. a constraint that no plan meets on its own
    for con in full.constraints:
        if least(con) <= con.limit:
            continue
        row_table = con.name.removeprefix("latency_")
        if row_table in budgets:
            lowest_ms = least(con) + fixed_ms[row_table]
            return InfeasibleBudget(
                f"latency budget {budgets[row_table]:.4f} ms on table {row_table!r} is infeasible:"
                f" the minimum achievable latency is {lowest_ms:.4f} ms (constraint {con.name} "
                "binds: every layer at its fastest allowed candidate)",
                table=row_table,
                budget_ms=budgets[row_table],
                min_latency_ms=lowest_ms,
                binding=(con.name,),
            )
        return InfeasibleBudget(
            f"{describe(con)} is infeasible on its own: the least achievable is "
            f"{least(con):.6g} (constraint {con.name} binds)",
            table=table,
            budget_ms=budget_ms,
            min_latency_ms=None,
            binding=(con.name,),
        )
    # 2. the least latency under all the other constraints, and which of them raise it
    lowest = _min_latency(full, kept, primary, others, solver)
    if lowest is None:
        names = tuple(con.name for con in others)
        return InfeasibleBudget(
            f"no plan meets {' and '.join(map(describe, others))} together (constraints {' + '.join(names)} bind)",
            table=table,
            budget_ms=budget_ms,
            min_latency_ms=None,
            binding=names,
        )
    if lowest <= primary.limit:
        raise SolverError(
            f"{solver} found no plan, but one of {lowest + fixed_ms[table]:.6f} ms "
            f"meets the budget of {budget_ms:.6f} ms"
        )
    binding = tuple(
        con
        for i, con in enumerate(others)
        if _min_latency(full, kept, primary, others[:i] + others[i + 1 :], solver)
        < lowest - 1e-9 * max(1.0, abs(lowest))
    )
    under = " under " + " and ".join(map(describe, binding)) if binding else ""
    names = (primary.name,) + tuple(con.name for con in binding)
    return InfeasibleBudget(
        f"latency budget {budget_ms:.4f} ms on table {table!r} is infeasible: the minimum "
        f"achievable latency{under} is {lowest + fixed_ms[table]:.4f} ms (constraint "
        f"{' + '.join(names)} binds)",
        table=table,
        budget_ms=budget_ms,
        min_latency_ms=lowest + fixed_ms[table],
        binding=names,
    )


def _min_latency(full: Model, kept, primary: Constraint, others, solver: str) -> float | None:
    """The least sum of ``primary``'s weights over the ``kept`` candidates subject to ``others``;
    None if infeasible."""
    from lana.solver import presolve

    model = presolve.take(Model(layers=full.layers, cost=primary.weights, constraints=others), kept)
    model = presolve.take(model, presolve.undominated(model))
    result = solve_model(model, solver)
    if result.status == "infeasible":
        return None
    return float(sum(model.cost[l][c] for l, c in enumerate(result.choice)))


@contextlib.contextmanager
def quiet_stdout():
    """Silences file descriptor 1 while HiGHS starts: it prints its banner from C++ before any
    option can turn it off (ERGO-Code/HiGHS#1932), which would corrupt ``lana solve --json``."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
