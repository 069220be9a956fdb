"""The ILP: every backend against brute force, the presolve's exactness, infeasibility reports.

Each backend runs in its own subprocess (`_WORKER`): highspy's HiGHS and OR-Tools' copy of HiGHS
in one process can segfault. In this process only the brute-force backend solves anything.
"""

from __future__ import annotations

import functools
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from lana import solver
from lana.problem import Problem, load_problem
from lana.solver import Constraint, InfeasibleBudget, Model, presolve
from lana.synthetic import write_random_library

BACKENDS = ["highs", "cbc", "pulp-highs", "cpsat"]
TOLERANCE = 1e-6

# Solves every case with one backend, twice: through solve() (presolve + backend), and the backend
# alone on the whole model; prints one JSON result per case.
_WORKER = r"""
import json, sys
from lana import solver
from lana.problem import load_problem
from lana.solver import Constraint, Model

backend, cases_path = sys.argv[1], sys.argv[2]
results, problems = [], {}
with open(cases_path) as f:
    cases = json.load(f)
for case in cases:
    if case["path"] not in problems:
        problems[case["path"]] = load_problem(case["path"])
    problem = problems[case["path"]]
    extra = case["extra_budgets_ms"]
    try:
        found = solver.solve(problem, case["budget_ms"], solver=backend,
                             max_params=case["max_params"], max_macs=case["max_macs"],
                             extra_budgets_ms=extra)
        result = {"status": "optimal", "choice": list(found.choice)}
    except solver.InfeasibleBudget as error:
        result = {"status": "infeasible", "min_latency_ms": error.min_latency_ms,
                  "binding": list(error.binding), "table": error.table}
    if case["raw"]:
        budgets = {problem.table: case["budget_ms"], **extra}
        rows = [Constraint(f"latency_{t}", problem.latency[t],
                           b - problem.fixed_ms[t] + solver.LATENCY_SLACK * max(1.0, b))
                for t, b in budgets.items()]
        rows += [Constraint(name, getattr(problem, name), case[f"max_{name}"])
                 for name in ("params", "macs") if case[f"max_{name}"] is not None]
        raw = solver.solve_model(Model(problem.layers, problem.scores, tuple(rows)), backend)
        result["raw_status"] = raw.status
        result["raw_choice"] = list(raw.choice) if raw.choice else None
    results.append(result)
print(json.dumps(results))
"""


@functools.cache
def _load(path: str) -> Problem:
    return load_problem(path)


def _plans(problem: Problem) -> np.ndarray:
    """Every plan as a row of candidate indices."""
    return np.array(list(itertools.product(*(range(len(s)) for s in problem.specs))))


def _totals(problem: Problem, plans: np.ndarray, arrays) -> np.ndarray:
    return sum(np.asarray(arrays[l])[plans[:, l]] for l in range(plans.shape[1]))


def _feasible(problem: Problem, plans: np.ndarray, case) -> np.ndarray:
    ok = np.ones(len(plans), dtype=bool)
    for table, budget in {problem.table: case["budget_ms"], **case["extra_budgets_ms"]}.items():
        latency = problem.fixed_ms[table] + _totals(problem, plans, problem.latency[table])
        ok &= latency <= budget + solver.LATENCY_SLACK * max(1.0, budget)
    for name in ("params", "macs"):
        if case[f"max_{name}"] is not None:
            ok &= _totals(problem, plans, getattr(problem, name)) <= case[f"max_{name}"]
    return ok


def _best(problem: Problem, case, avoid=(), min_diff=1) -> float | None:
    """The optimum by enumeration (numpy, independent of lana.solver); None if infeasible."""
    plans = _plans(problem)
    ok = _feasible(problem, plans, case)
    for plan in avoid:
        ok &= (plans != np.asarray(plan)).sum(axis=1) >= min_diff
    if not ok.any():
        return None
    return float(_totals(problem, plans, problem.scores)[ok].min())


def _case(path, budget_ms, max_params=None, max_macs=None, extra=None, raw=True) -> dict:
    return {
        "path": str(path),
        "budget_ms": float(budget_ms),
        "max_params": max_params,
        "max_macs": max_macs,
        "extra_budgets_ms": extra or {},
        "raw": raw,
    }


@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory):
    """Random 4-5 layer libraries, each under a budget alone and with every other constraint;
    "best" is the optimum by enumeration."""
    cases = []
    for seed in range(4):
        path = tmp_path_factory.mktemp("tiny") / f"tiny{seed}.h5"
        n_layers, n_candidates = (4, 5) if seed % 2 else (5, 4)
        write_random_library(path, n_layers, n_candidates, seed=seed, tables=("cpu-b1", "gpu-b64"))
        problem = _load(str(path))
        plans = _plans(problem)
        teacher_ms = problem.teacher_ms()
        params = np.quantile(_totals(problem, plans, problem.params), 0.3)
        macs = np.quantile(_totals(problem, plans, problem.macs), 0.3)
        gpu = problem.fixed_ms["gpu-b64"] + np.quantile(_totals(problem, plans, problem.latency["gpu-b64"]), 0.4)
        cases += [_case(path, f * teacher_ms) for f in (0.45, 0.6, 0.8, 1.0)]  # 1.0: teacher fits
        cases += [
            _case(path, 0.7 * teacher_ms, max_params=int(params)),
            _case(path, 0.7 * teacher_ms, max_macs=int(macs)),
            _case(path, 0.7 * teacher_ms, extra={"gpu-b64": float(gpu)}),
            _case(path, 0.05 * teacher_ms),
        ]  # below the fastest plan
    for case in cases:
        case["best"] = _best(_load(case["path"]), case)
    return cases


@pytest.fixture(scope="module")
def mid_cases(tmp_path_factory):
    cases = []
    for seed in range(2):
        path = tmp_path_factory.mktemp("mid") / f"mid{seed}.h5"
        write_random_library(path, 20, 40, seed=100 + seed, tables=("cpu-b1", "gpu-b64"))
        teacher_ms = _load(str(path)).teacher_ms()
        cases += [_case(path, f * teacher_ms, raw=False) for f in (0.35, 0.55, 0.75)]
        cases.append(_case(path, 0.6 * teacher_ms, max_params=10**7, raw=False))
    return cases


@pytest.fixture(scope="module")
def results(tiny_cases, mid_cases, tmp_path_factory):
    """backend -> (tiny results, mid results), each backend solved in its own process."""
    cases_path = tmp_path_factory.mktemp("cases") / "cases.json"
    cases_path.write_text(json.dumps(tiny_cases + mid_cases))
    workers = {
        b: subprocess.Popen(
            [sys.executable, "-c", _WORKER, b, str(cases_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in BACKENDS
    }  # all at once
    out = {}
    for backend, worker in workers.items():
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, f"{backend} worker failed:\n{stderr}"
        found = json.loads(stdout)
        out[backend] = (found[: len(tiny_cases)], found[len(tiny_cases) :])
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_finds_the_brute_force_optimum_on_tiny_libraries(backend, tiny_cases, results):
    for case, found in zip(tiny_cases, results[backend][0]):
        problem, best = _load(case["path"]), case["best"]
        if best is None:
            assert found["status"] == "infeasible" and found["raw_status"] == "infeasible"
            continue
        for key in ("choice", "raw_choice"):  # with the presolve, and the backend alone
            plan = np.array([found[key]])
            assert _feasible(problem, plan, case)[0], (key, case)
            assert _totals(problem, plan, problem.scores)[0] == pytest.approx(best, abs=TOLERANCE)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "highs"])
def test_backends_agree_with_highs_on_mid_size_libraries(backend, mid_cases, results):
    for case, found, reference in zip(mid_cases, results[backend][1], results["highs"][1]):
        problem = _load(case["path"])
        plans = np.array([found["choice"], reference["choice"]])
        assert _feasible(problem, plans, case).all()
        drop, highs_drop = _totals(problem, plans, problem.scores)
        assert drop == pytest.approx(highs_drop, abs=TOLERANCE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_reports_the_fastest_plan_when_the_budget_is_too_small(backend, tiny_cases, results):
    for case, found in zip(tiny_cases, results[backend][0]):
        problem = _load(case["path"])
        if case["best"] is not None or case["max_params"] or case["extra_budgets_ms"]:
            continue
        fastest = problem.fixed_ms["cpu-b1"] + sum(lat.min() for lat in problem.latency["cpu-b1"])
        assert found["binding"] == ["latency_cpu-b1"]
        assert found["min_latency_ms"] == pytest.approx(fastest, rel=1e-12)


def test_presolve_keeps_the_optimum(tiny_cases):
    for case in tiny_cases:
        problem, best = _load(case["path"]), case["best"]
        try:
            found = solver.solve(
                problem,
                case["budget_ms"],
                solver="brute",
                max_params=case["max_params"],
                max_macs=case["max_macs"],
                extra_budgets_ms=case["extra_budgets_ms"],
            )
        except InfeasibleBudget:
            assert best is None
            continue
        assert found.objective == pytest.approx(best, abs=TOLERANCE)


@pytest.mark.parametrize("min_diff", [1, 2, 3])
def test_presolve_keeps_the_best_plan_that_differs_from_earlier_ones(tiny_cases, min_diff):
    for case in tiny_cases[:14]:
        problem = _load(case["path"])
        avoid = []
        for _ in range(3):
            best = _best(problem, case, avoid, min_diff)
            try:
                found = solver.solve(
                    problem,
                    case["budget_ms"],
                    solver="brute",
                    max_params=case["max_params"],
                    max_macs=case["max_macs"],
                    extra_budgets_ms=case["extra_budgets_ms"],
                    avoid=avoid,
                    min_diff=min_diff,
                )
            except (InfeasibleBudget, solver.NoMorePlans):
                assert best is None
                break
            assert found.objective == pytest.approx(best, abs=TOLERANCE)
            assert all(sum(a != b for a, b in zip(found.choice, plan)) >= min_diff for plan in avoid)
            avoid.append(found.choice)


def test_two_dimensional_dominance_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        cost, weight = (rng.integers(0, 4, n).astype(float) for _ in range(2))  # many ties
        one_row = Model(("a",), (cost,), (Constraint("w", (weight,), 1.0),))
        two_rows = Model(("a",), (cost,), (Constraint("w", (weight,), 1.0), Constraint("zero", (np.zeros(n),), 1.0)))
        assert list(presolve.undominated(one_row)[0]) == list(presolve.undominated(two_rows)[0])


def _toy(**changes) -> Problem:
    """Two layers: teacher (slow, 10 params), fast (20 params), small (2 params, 1 MAC, slowish)."""
    row = np.array
    fields = dict(
        model="toy",
        table="t",
        score="kl",
        layers=("a", "b"),
        specs=(("teacher", "fast", "small"),) * 2,
        scores=(row([0.0, 1.0, 1.0]), row([0.0, 1.0, 1.0])),
        latency={"t": (row([1.0, 0.2, 0.8]),) * 2, "u": (row([1.0, 0.9, 0.1]),) * 2},
        fixed_ms={"t": 0.5, "u": 0.0},
        params=(row([10, 20, 2]),) * 2,
        macs=(row([5, 5, 1]),) * 2,
    )
    return Problem(**{**fields, **changes})


def test_infeasible_budget_gives_the_fastest_plan_when_latency_binds_alone():
    with pytest.raises(InfeasibleBudget) as error:
        solver.solve(_toy(), 0.8, solver="brute")
    assert error.value.min_latency_ms == pytest.approx(0.9)  # 0.5 fixed + 2 x 0.2
    assert error.value.binding == ("latency_t",)
    assert error.value.exit_code == 2
    assert "0.9000 ms" in str(error.value) and "latency_t" in str(error.value)


def test_infeasible_budget_names_params_when_they_bind_together_with_latency():
    # alone each is met (0.9 ms; 4 params), together the fastest plan has small, small: 2.1 ms
    with pytest.raises(InfeasibleBudget) as error:
        solver.solve(_toy(), 1.5, solver="brute", max_params=12)
    assert error.value.min_latency_ms == pytest.approx(2.1)
    assert error.value.binding == ("latency_t", "params")
    assert "params <= 12" in str(error.value)


def test_infeasible_params_alone_has_no_min_latency():
    with pytest.raises(InfeasibleBudget) as error:
        solver.solve(_toy(), 5.0, solver="brute", max_params=3)
    assert error.value.binding == ("params",) and error.value.min_latency_ms is None


def test_infeasible_extra_table_reports_that_table():
    with pytest.raises(InfeasibleBudget) as error:
        solver.solve(_toy(), 5.0, solver="brute", extra_budgets_ms={"u": 0.1})
    assert error.value.table == "u" and error.value.min_latency_ms == pytest.approx(0.2)


def test_every_constraint_option_changes_the_plan_as_brute_force_says():
    toy = _toy()
    assert solver.solve(toy, 5.0, solver="brute").choice == (0, 0)
    assert solver.solve(toy, 2.0, solver="brute").objective == 1.0  # one layer must change
    assert solver.solve(toy, 5.0, solver="brute", max_params=15).objective == 1.0
    found = solver.solve(toy, 5.0, solver="brute", max_macs=6)
    assert found.choice.count(2) == 1 and found.macs <= 6
    found = solver.solve(toy, 5.0, solver="brute", extra_budgets_ms={"u": 1.2})
    assert found.choice.count(2) == 1 and found.latency_ms["u"] <= 1.2


def test_candidates_without_numbers_are_never_chosen():
    nan = float("nan")
    toy = _toy(scores=(np.array([nan, 1.0, 0.5]), np.array([0.0, 1.0, 1.0])))
    assert solver.solve(toy, 5.0, solver="brute").choice == (2, 0)


def test_unknown_backend_or_table_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown solver 'gurobi'"):
        solver.solve(_toy(), 5.0, solver="gurobi")
    with pytest.raises(ValueError, match="available tables are t, u"):
        solver.solve(_toy(), 5.0, solver="brute", extra_budgets_ms={"v": 1.0})


def test_cpsat_rounds_latency_rows_so_its_plans_always_fit():
    from lana.solver import cpsat  # OR-Tools itself is imported only when solving

    rng = np.random.default_rng(1)
    weights = tuple(rng.uniform(0.01, 1.0, 7) for _ in range(5))
    integer, limit = cpsat._integer_row(weights, 2.5, n_layers=5)
    for plan in itertools.product(range(7), repeat=5):
        if sum(integer[l][c] for l, c in enumerate(plan)) <= limit:
            assert sum(weights[l][c] for l, c in enumerate(plan)) <= 2.5
    params, params_limit = cpsat._integer_row((np.array([3.0, 7.0]),), 9.0, n_layers=1)
    assert list(params[0]) == [3, 7] and params_limit == 9  # integer rows stay exact
