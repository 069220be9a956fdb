"""Plans, libraries as the ILP reads them, and the ``lana solve`` / ``lana pareto`` commands.

In-process solves use the default backend (HiGHS via highspy); the commands run in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from helpers import edited_library

from lana.cli.solve import parse_budgets
from lana.plan import Plan, pareto, plot_pareto, solve_diverse, solve_library
from lana.problem import load_problem, parse_budget, restrict
from lana.solver import InfeasibleBudget
from lana.synthetic import write_random_library

ARCHITECTURE_EXAMPLE = {
    "model": "resnet18",
    "table": "cpu-b64",
    "score": "kl",
    "budget_ms": 3.2,
    "choices": {"layer1.0": "ir_k3_e2"},
    "predicted_latency_ms": 3.1,
    "predicted_drop": 0.4,
    "solver": "highs",
    "solve_time_s": 0.01,
}
PLAN_KEYS = [
    "model",
    "table",
    "score",
    "budget_ms",
    "choices",
    "predicted_latency_ms",
    "predicted_drop",
    "solver",
    "solve_time_s",
    "latency_ms",
    "params",
    "macs",
    "layer_latency_ms",
    "layer_score",
    "config",
]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    path = tmp_path_factory.mktemp("lib") / "lib.h5"
    return write_random_library(path, 16, 30, seed=3, tables=("cpu-b1", "gpu-b64"))


def _cli(*args, check_rc=0):
    done = subprocess.run(
        [sys.executable, "-m", "lana.cli.solve", *map(str, args)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == check_rc, done.stderr
    return done


# -- the library as the ILP reads it ---------------------------------------------------------------


def test_load_problem_defaults_to_the_first_table_and_the_kl_score(library):
    problem = load_problem(library)
    assert (problem.table, problem.score, problem.model) == ("cpu-b1", "kl", "synthetic")
    assert problem.tables == ("cpu-b1", "gpu-b64") and len(problem.layers) == 16
    assert all(len(s) == len(lat) == 30 for s, lat in zip(problem.specs, problem.latency["cpu-b1"]))


def test_load_problem_follows_the_builds_default_score(tmp_path):
    path = write_random_library(tmp_path / "l.h5", 3, 4, seed=0)
    with edited_library(path) as f:
        f.attrs["config"] = json.dumps({"default_score": "ce_delta"})
    assert load_problem(path).score == "ce_delta"
    assert load_problem(path, score="top1_drop").score == "top1_drop"


def test_load_problem_lists_what_is_available_when_asked_for_something_else(library):
    with pytest.raises(ValueError, match="available tables are cpu-b1, gpu-b64"):
        load_problem(library, table="tpu")
    with pytest.raises(ValueError, match="available scores are ce_delta, kl, top1_drop"):
        load_problem(library, score="acc")


def test_load_problem_refuses_incomplete_libraries_unless_allowed(tmp_path):
    path = write_random_library(tmp_path / "l.h5", 3, 4, seed=0)
    with edited_library(path) as f:
        f.attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        load_problem(path)
    assert len(load_problem(path, allow_incomplete=True).layers) == 3


def test_load_problem_refuses_other_files(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(ValueError, match="not a lana library"):
        load_problem(tmp_path / "other.h5")


def test_random_library_is_reproducible_and_in_the_documented_layout(tmp_path):
    a = write_random_library(tmp_path / "a.h5", 5, 8, seed=11, tables=("t1", "t2"))
    b = write_random_library(tmp_path / "b.h5", 5, 8, seed=11, tables=("t1", "t2"))
    pa, pb = load_problem(a), load_problem(b)
    assert pa.specs == pb.specs and all(np.array_equal(x, y) for x, y in zip(pa.scores, pb.scores))
    with h5py.File(a) as f:
        assert f.attrs["format"] == "lana-library" and f.attrs["format_version"] == 2
        assert bool(f.attrs["complete"]) and json.loads(f.attrs["stages"])["score"]
        assert {"fixed_ms", "teacher_ms", "device"} <= set(f["latency_tables/t2"].attrs)
        group = f["layers/000"]
        assert {"name", "kind", "in_shape", "out_shape", "stride", "params", "macs"} <= set(group.attrs)
        assert {"specs", "params", "macs", "distill_loss", "scores", "latency", "latency_spread"} <= set(group)


# -- budgets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ms", [("0.5x", 5.0), ("3.2ms", 3.2), (3.2, 3.2), (2, 2.0), (" 1.5X ", 15.0)])
def test_parse_budget_reads_factors_and_milliseconds(text, ms):
    assert parse_budget(text, teacher_ms=10.0) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "-1ms", "0x", "nan", "3.2"])
def test_parse_budget_rejects_nonsense_clearly(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text, teacher_ms=10.0)


def test_parse_budgets_expands_inclusive_ranges_and_lists():
    assert parse_budgets("0.2:1.0:0.05") == [f"{0.2 + 0.05 * i:.2g}x" for i in range(17)]
    assert parse_budgets("2ms:3ms:0.5") == ["2ms", "2.5ms", "3ms"]
    assert parse_budgets("0.3x, 4ms") == ["0.3x", "4ms"]
    with pytest.raises(ValueError, match="STEP > 0"):
        parse_budgets("1:0.5:0.1")


def test_relative_budget_is_a_fraction_of_the_teachers_predicted_latency(library):
    problem = load_problem(library)
    teacher_ms = problem.fixed_ms["cpu-b1"] + sum(
        lat[specs.index("teacher")] for lat, specs in zip(problem.latency["cpu-b1"], problem.specs)
    )
    plan = solve_library(library, "0.5x")
    assert plan.budget_ms == pytest.approx(0.5 * teacher_ms)
    assert plan.predicted_latency_ms <= plan.budget_ms


# -- plans -----------------------------------------------------------------------------------------


def test_plan_numbers_add_up_to_its_predictions(library):
    plan = solve_library(library, "0.6x")
    problem = load_problem(library)
    assert [layer for layer, _ in plan.choices] == list(problem.layers)  # network order
    assert plan.predicted_latency_ms == pytest.approx(problem.fixed_ms["cpu-b1"] + sum(plan.layer_latency_ms))
    assert plan.predicted_drop == pytest.approx(sum(plan.layer_score))
    assert plan.latency_ms["cpu-b1"] == plan.predicted_latency_ms and "gpu-b64" in plan.latency_ms


def test_full_budget_keeps_the_teacher_accuracy(library):
    assert solve_library(library, "1.0x").predicted_drop == 0.0  # kl >= 0, the teacher fits


def test_plan_json_round_trips_and_saves_atomically(library, tmp_path):
    plan = solve_library(library, "0.5x", max_params=10**7)
    assert Plan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    plan.save(path)
    plan.save(path)  # overwrites
    assert Plan.load(path) == plan
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left


def test_plan_reads_the_architecture_example():
    plan = Plan.from_dict(ARCHITECTURE_EXAMPLE)
    assert plan.specs == {"layer1.0": "ir_k3_e2"} and plan.budget_ms == 3.2
    assert list(plan.to_dict())[:9] == list(ARCHITECTURE_EXAMPLE)


def test_keep_pins_layers_to_the_teacher_and_exclude_forbids_specs(library):
    plan = solve_library(library, "0.4x", keep=["blocks.0.*"], exclude=["ir_*_se", "blocks.3.*:dw_*"])
    for layer, spec in plan.choices:
        if layer.startswith("blocks.0."):
            assert spec == "teacher"
        assert not (spec.startswith("ir_") and spec.endswith("_se"))
        assert not (layer.startswith("blocks.3.") and spec.startswith("dw_"))
    assert plan.config["keep"] == ["blocks.0.*"]


def test_excluding_teacher_replaces_every_layer(library):
    plan = solve_library(library, "1.0x", exclude=["teacher"])
    assert all(spec != "teacher" for _, spec in plan.choices)


def test_patterns_that_match_nothing_are_errors(library):
    problem = load_problem(library)
    with pytest.raises(ValueError, match="matches no layer name"):
        restrict(problem, keep=["layer9.*"])
    with pytest.raises(ValueError, match="matches no candidate spec"):
        restrict(problem, exclude=["mbconv_*"])
    with pytest.raises(ValueError, match="no candidate"):
        restrict(problem, exclude=["*"])


def test_params_macs_and_extra_table_limits_hold_and_bind(library):
    free = solve_library(library, "0.7x")
    for option, value, total in [("max_params", free.params * 0.8, "params"), ("max_macs", free.macs * 0.8, "macs")]:
        plan = solve_library(library, "0.7x", **{option: int(value)})
        assert getattr(plan, total) <= value and plan.predicted_drop >= free.predicted_drop
    gpu_ms = 0.9 * free.latency_ms["gpu-b64"]
    plan = solve_library(library, "0.7x", extra_budgets={"gpu-b64": f"{gpu_ms}ms"})
    assert plan.latency_ms["gpu-b64"] <= gpu_ms and plan.predicted_drop >= free.predicted_drop


def test_infeasible_budget_raises_with_the_minimum_latency(library):
    with pytest.raises(InfeasibleBudget) as error:
        solve_library(library, "0.01x")
    assert error.value.min_latency_ms > error.value.budget_ms


def test_diverse_plans_differ_pairwise_and_come_best_first(library):
    plans = solve_diverse(library, "0.5x", k=4, min_diff=3)
    assert len(plans) == 4
    assert plans[0].choices == solve_library(library, "0.5x").choices
    for i, a in enumerate(plans):
        for b in plans[i + 1 :]:
            assert sum(x != y for x, y in zip(a.choices, b.choices)) >= 3
            assert a.predicted_drop <= b.predicted_drop + 1e-12
    assert [p.config["diverse_rank"] for p in plans] == [1, 2, 3, 4]


def test_pareto_drop_never_rises_with_the_budget_and_skips_infeasible_ones(library, tmp_path):
    plans = pareto(library, ["0.01x", "0.3x", "0.5x", "0.7x", "0.9x"])
    assert [p.config["budget"] for p in plans] == ["0.3x", "0.5x", "0.7x", "0.9x"]
    drops = [p.predicted_drop for p in plans]
    assert drops == sorted(drops, reverse=True)
    png = plot_pareto(plans, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the commands ----------------------------------------------------------------------------------


def test_solve_json_follows_the_documented_schema(library):
    data = json.loads(_cli("solve", library, "--budget", "0.5x", "--json").stdout)
    assert list(data) == PLAN_KEYS
    assert isinstance(data["choices"], dict) and len(data["choices"]) == 16
    assert list(data["layer_latency_ms"]) == list(data["choices"])
    assert {type(data[k]) for k in ("budget_ms", "predicted_latency_ms", "predicted_drop", "solve_time_s")} == {float}
    assert isinstance(data["params"], int) and data["config"]["budget"] == "0.5x"
    assert Plan.from_dict(data).predicted_drop == data["predicted_drop"]


def test_solve_prints_every_layer_and_writes_the_plan(library, tmp_path):
    out = tmp_path / "plan.json"
    text = _cli("solve", library, "--budget", "0.5x", "--out", out, "--max-params", "20M").stdout
    plan = Plan.load(out)
    for layer, spec in plan.choices:
        assert layer in text and spec in text
    assert "predicted latency" in text and "predicted drop" in text and "solve time" in text


def test_solve_exits_4_with_the_minimum_latency_when_infeasible(library):
    done = _cli("solve", library, "--budget", "0.01x", check_rc=4)
    assert "minimum achievable latency" in done.stderr and "latency_cpu-b1" in done.stderr


def test_solve_diverse_writes_one_file_per_plan(library, tmp_path):
    out = tmp_path / "plan.json"
    data = json.loads(
        _cli("solve", library, "--budget", "0.5x", "--diverse", 3, "--min-diff", 2, "--json", "--out", out).stdout
    )
    assert len(data) == 3
    assert [Plan.load(tmp_path / f"plan_{i}.json").choices for i in (1, 2, 3)] == [
        Plan.from_dict(d).choices for d in data
    ]


def test_pareto_prints_a_table_and_draws_the_front(library, tmp_path):
    png = tmp_path / "front.png"
    text = _cli("pareto", library, "--budgets", "0.3:0.9:0.2", "--plot", png).stdout
    assert text.count("x ") >= 4 and png.exists()


def test_solve_leaves_torch_out(library):
    script = (
        "import sys, lana.cli.solve as cli;"
        f"rc = cli.main(['solve', {str(library)!r}, '--budget', '0.5x', '--json']);"
        "sys.stderr.write(repr(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'timm', 'torchvision'))))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["choices"]
    assert done.stderr.strip() == "[]"
