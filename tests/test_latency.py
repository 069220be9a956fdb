"""Latency meters, tables and the end-to-end check, on a tiny network (seconds, CPU only)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from lana.latency import (
    LatencyMeter,
    LatencyTable,
    OnnxRuntimeMeter,
    Timing,
    TorchMeter,
    fingerprint,
    make_meter,
    measure_table,
    predict_ms,
)
from lana.latency_check import check_latency, random_choices, teacher_choices
from lana.layers import Layer

INPUT_SHAPE = (3, 16, 16)
CUDA = torch.cuda.is_available()


class TinyNet(nn.Module):
    """Stem, two replaceable blocks (the second one downsamples), head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


LAYERS = [
    Layer("blocks.0", "Sequential", (8, 16, 16), (8, 16, 16), 1, 584, 147456),
    Layer("blocks.1", "Sequential", (8, 16, 16), (16, 8, 8), 2, 1168, 73728),
]
SPECS = [["teacher", "id", "conv_k1", "conv_k3"], ["teacher", "conv_k1", "conv_k3"]]


def build(index: int, spec: str) -> nn.Module:
    """A stand-in candidate builder: ``id`` or a k x k conv with the layer's shapes."""
    layer = LAYERS[index]
    if spec == "id":
        return nn.Identity()
    kernel = int(spec[-1])
    return nn.Conv2d(layer.in_shape[0], layer.out_shape[0], kernel, layer.stride, kernel // 2)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def meter():
    return TorchMeter(batch_size=2, threads=1, repeats=4, warmup=1)


@pytest.fixture(scope="module")
def table(teacher, meter):
    return measure_table(teacher, LAYERS, SPECS, build, meter, "cpu-b2", progress=False,
                         input_shape=INPUT_SHAPE, rounds=2)  # fmt: skip


def test_timing_is_median_and_interquartile_range():
    timing = Timing.of([5.0, 1.0, 3.0, 2.0, 4.0])
    assert timing.median_ms == 3.0
    assert timing.spread_ms == 2.0
    assert timing.samples_ms == (5.0, 1.0, 3.0, 2.0, 4.0)


def test_torch_meter_gives_one_positive_sample_per_repeat(meter):
    timing = meter(nn.Conv2d(3, 8, 3), INPUT_SHAPE)
    assert len(timing.samples_ms) == meter.repeats
    assert timing.median_ms > 0 and timing.spread_ms >= 0


def test_torch_meter_restores_training_mode_and_threads(meter):
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    threads = torch.get_num_threads()
    meter(module, INPUT_SHAPE)
    assert module.training
    assert torch.get_num_threads() == threads


def test_onnxruntime_meter_times_a_tiny_conv():
    timing = OnnxRuntimeMeter(batch_size=2, threads=1, repeats=3, warmup=1)(nn.Conv2d(3, 8, 3), INPUT_SHAPE)
    assert len(timing.samples_ms) == 3
    assert timing.median_ms > 0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_meter_times_with_events():
    timing = make_meter("cuda", "torch", 2, repeats=3)(nn.Conv2d(3, 8, 3), INPUT_SHAPE)
    assert timing.median_ms > 0


@pytest.mark.skipif(CUDA, reason="checks the error raised without a GPU")
def test_make_meter_refuses_cuda_without_a_gpu():
    with pytest.raises(RuntimeError, match="cuda"):
        make_meter("cuda", "torch", 1)


@pytest.mark.parametrize(
    ("device", "backend", "message"),
    [("cpu", "tensorrt", "unknown latency backend"), ("cuda", "onnxruntime", "CPU only")],
)
def test_make_meter_rejects_unsupported_targets(device, backend, message):
    with pytest.raises(ValueError, match=message):
        make_meter(device, backend, 1)


def test_fingerprint_names_the_target(meter):
    print_ = fingerprint(meter)
    assert {"cpu", "threads", "torch", "onnxruntime", "backend", "device", "gpu",
            "batch_size"} <= set(print_)  # fmt: skip
    assert (print_["threads"], print_["batch_size"], print_["backend"]) == (1, 2, "torch")
    assert print_["gpu"] is None


@pytest.mark.parametrize("method", ["in_network", "isolated"])
def test_measure_table_gives_one_positive_latency_per_candidate(teacher, meter, method):
    table = measure_table(teacher, LAYERS, SPECS, build, meter, "t", progress=False,
                          input_shape=INPUT_SHAPE, rounds=2, method=method)  # fmt: skip
    assert [len(row) for row in table.latency_ms] == [len(specs) for specs in SPECS]
    assert [len(row) for row in table.spread_ms] == [len(specs) for specs in SPECS]
    for row, spread in zip(table.latency_ms, table.spread_ms):
        assert np.all(row > 0) and np.all(spread >= 0)
    assert table.teacher_ms > 0 and np.isfinite(table.fixed_ms) and table.fixed_spread_ms >= 0
    assert table.specs == SPECS
    assert table.fingerprint["method"] == method
    assert (table.backend, table.batch_size, table.threads) == ("torch", 2, 1)


def test_measure_table_leaves_the_teacher_unchanged(teacher, table):
    assert isinstance(teacher.blocks[0], nn.Sequential)
    assert isinstance(teacher.blocks[1], nn.Sequential)


def test_measure_table_refuses_in_network_timing_on_a_compiled_backend(teacher):
    with pytest.raises(ValueError, match="inside the network"):
        measure_table(teacher, LAYERS, SPECS, build, OnnxRuntimeMeter(), "t", progress=False,
                      input_shape=INPUT_SHAPE, method="in_network")  # fmt: skip


def _toy_table(fixed_ms=1.0) -> LatencyTable:
    return LatencyTable(
        name="toy", device="cpu", backend="torch", batch_size=2, threads=1, fingerprint={},
        fixed_ms=fixed_ms, fixed_spread_ms=0.0, teacher_ms=7.0,
        latency_ms=[np.array([2.0, 0.5, 1.0, 1.5]), np.array([4.0, 2.0, 3.0])],
        spread_ms=[np.zeros(4), np.zeros(3)], specs=SPECS,
    )  # fmt: skip


def test_predict_ms_is_fixed_plus_the_chosen_latencies():
    table = _toy_table()
    assert predict_ms(table, [0, 0]) == pytest.approx(7.0)
    assert predict_ms(table, [1, 2]) == pytest.approx(1.0 + 0.5 + 3.0)
    with pytest.raises(ValueError, match="choices"):
        predict_ms(table, [0])


def test_teacher_and_random_choices_index_the_table():
    table = _toy_table()
    assert teacher_choices(table) == [0, 0]
    for choices in random_choices(table, 20, seed=1):
        assert all(0 <= c < len(row) for c, row in zip(choices, table.latency_ms))


def test_check_latency_reports_teacher_and_students(teacher, table, meter):
    plans = [[1, 2], ["conv_k3", "conv_k1"], {"blocks.1": "conv_k3"}]
    report = check_latency(teacher, table, LAYERS, plans, build, meter,
                           input_shape=INPUT_SHAPE, rounds=2)  # fmt: skip
    assert [row.name for row in report.rows] == [
        "teacher",
        "student_01",
        "student_02",
        "student_03",
    ]
    assert [row.choices for row in report.rows] == [(0, 0), (1, 2), (3, 1), (0, 2)]
    assert all(row.measured_ms > 0 and row.spread_ms >= 0 for row in report.rows)
    assert report.rows[1].predicted_ms == pytest.approx(predict_ms(table, [1, 2]))
    assert report.max_abs_error_pct >= report.median_abs_error_pct >= 0
    lines = report.to_text().splitlines()
    assert len(lines) == 1 + len(report.rows) + 1
    assert lines[-1].startswith("latency check cpu-b2 (batch 2): 4 models, median |error| ")
    assert "max" in lines[-1] and "vs the table's" in lines[-1]
    assert report.drift_pct == pytest.approx(100 * (report.rows[0].measured_ms / table.teacher_ms - 1))
    teacher_ratio = report.rows[0].predicted_ms / report.rows[0].measured_ms
    assert report.relative_errors_pct == pytest.approx(
        [100 * (row.predicted_ms / row.measured_ms / teacher_ratio - 1) for row in report.rows[1:]]
    )
    assert "; against the teacher: median |error| " in lines[-1]


def test_check_latency_refuses_a_meter_that_does_not_match_the_table(teacher, table):
    with pytest.raises(ValueError, match="does not match"):
        check_latency(teacher, table, LAYERS, [], build, TorchMeter(batch_size=8),
                      input_shape=INPUT_SHAPE)  # fmt: skip


@dataclass(frozen=True)
class RecordingMeter(LatencyMeter):
    """Runs the module once per repeat, records what ran, and reports 1 ms per sample."""

    eager: bool = True
    batch_size: int = 2
    threads: int | None = 1
    repeats: int = 2
    warmup: int = 0
    device: str = "cpu"
    log: list = field(default_factory=list)

    backend = "torch"

    def __call__(self, module, input_shape):
        self.log.append(module)
        with torch.inference_mode():
            for _ in range(self.repeats):
                module(torch.zeros(self.batch_size, *input_shape))
        return Timing.of([1.0] * self.repeats)


def _is_plain_teacher(module) -> bool:
    """A TinyNet whose blocks are not wrapped in timers (nor replaced)."""
    return isinstance(module, TinyNet) and isinstance(module.blocks[0], nn.Sequential)


def test_isolated_timing_visits_every_candidate_once_per_round(teacher):
    meter = RecordingMeter(eager=False, repeats=6)
    table = measure_table(teacher, LAYERS, SPECS, build, meter, "t", progress=False,
                          input_shape=INPUT_SHAPE, rounds=3)  # fmt: skip
    # every candidate, the teacher end to end, then 6 random and 4 light or heavy students whole
    candidates = sum(map(len, SPECS))
    per_round = candidates + 1 + 10
    assert len(meter.log) == 3 * per_round
    for start in range(0, len(meter.log), per_round):
        visited = meter.log[start : start + per_round]
        assert len({id(module) for module in visited[: candidates + 1]}) == candidates + 1
        assert _is_plain_teacher(visited[candidates])
        assert all(isinstance(m, TinyNet) and m is not visited[candidates] for m in visited[candidates + 1 :])
    # 6 repeats spread over 3 rounds: 2 samples per call
    assert table.latency_ms[0][0] == 1.0


def test_in_network_timing_runs_every_candidate_in_every_round(teacher):
    meter = RecordingMeter(repeats=1)
    log = meter.log  # meter calls (modules) and candidate forwards ((layer, spec)), in order

    def spy(index, spec):
        module = build(index, spec)
        module.register_forward_hook(lambda *_: log.append((index, spec)))
        return module

    rounds = 3
    measure_table(teacher, LAYERS, SPECS, spy, meter, "t", progress=False,
                  input_shape=INPUT_SHAPE, rounds=rounds, max_rounds=rounds)  # fmt: skip
    calls = [i for i, entry in enumerate(log) if isinstance(entry, nn.Module)]
    # one student per candidate slot, timed with the timers and again plain; 4 light or heavy
    # students timed plain (for the whole-student fit); the plain teacher
    calls_per_round = 2 * max(map(len, SPECS)) + 4 + 1
    assert len(calls) == rounds * calls_per_round
    # three networks: the one with timers, the plain student, the plain teacher (once a round)
    counts = Counter(id(log[i]) for i in calls)
    slots = max(map(len, SPECS))
    assert sorted(counts.values()) == [rounds, rounds * slots, rounds * (slots + 4)]
    teacher_id = next(k for k, n in counts.items() if n == rounds)
    assert _is_plain_teacher(next(log[i] for i in calls if id(log[i]) == teacher_id))
    built = {(i, spec) for i, specs in enumerate(SPECS) for spec in specs if spec != "teacher"}
    bounds = calls[::calls_per_round] + [len(log)]
    for start, end in zip(bounds, bounds[1:]):  # every candidate runs in every round
        assert {entry for entry in log[start:end] if isinstance(entry, tuple)} == built


@dataclass(frozen=True)
class BurstMeter(RecordingMeter):
    """Reports 1 ms per sample, but 10 ms during calls ``burst[0]`` to ``burst[1] - 1``."""

    burst: tuple = (0, 0)

    def __call__(self, module, input_shape):
        slow = self.burst[0] <= len(self.log) < self.burst[1]
        self.log.append(module)
        return Timing.of([10.0 if slow else 1.0] * self.repeats)


def test_measure_table_replaces_a_round_caught_in_a_burst_of_load(teacher):
    per_round = sum(map(len, SPECS)) + 1 + 10  # candidates, teacher, 10 whole students
    meter = BurstMeter(eager=False, burst=(per_round, 2 * per_round))  # the whole second round
    table = measure_table(teacher, LAYERS, SPECS, build, meter, "t", progress=False,
                          input_shape=INPUT_SHAPE, rounds=3)  # fmt: skip
    assert table.fingerprint["rounds_run"] == 4
    assert table.fingerprint["max_round_load"] == 1.0
    assert all(np.all(row == 1.0) for row in table.latency_ms) and table.teacher_ms == 1.0


def test_check_latency_flags_a_machine_that_stays_busy(teacher, table):
    models = 2
    meter = BurstMeter(batch_size=table.batch_size, burst=(models, 10**6))  # busy after round 1
    report = check_latency(teacher, table, LAYERS, [[1, 1]], build, meter,
                           input_shape=INPUT_SHAPE, rounds=2, max_rounds=4)  # fmt: skip
    assert report.rounds_run == 4 and not report.quiet
    assert "machine busy" in report.to_text().splitlines()[-1]


# -- noise: a table timed under load is flagged or re-timed, never silently written ----------------

BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


@dataclass(frozen=True)
class LoadStartingMeter(TorchMeter):
    """A real meter that starts busy loops on every core after ``start_at`` calls (half-way
    through a table) and keeps them for at most ``seconds``; ``procs`` collects them."""

    start_at: int = 0
    seconds: float = 20.0
    procs: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def __call__(self, module, input_shape):
        self.calls.append(1)
        if len(self.calls) == self.start_at and not self.procs:
            code = BUSY.format(seconds=self.seconds)
            self.procs.extend([subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)])
            time.sleep(0.3)  # let them start
        return super().__call__(module, input_shape)


def test_assess_flags_other_processes_and_drift_with_the_figures():
    from lana.noise import DRIFT_LIMIT_PCT, OTHERS_CORES_LIMIT, assess

    quiet = assess([1.0, 1.02, 1.01], 0.01)
    assert not quiet["noisy"] and quiet["teacher_drift_pct"] == 2.0 and quiet["reason"] == ""
    busy = assess([1.0, 1.0], OTHERS_CORES_LIMIT + 0.5)
    assert busy["noisy"] and "other processes used" in busy["reason"]
    drift = assess([1.0, 1.0 + DRIFT_LIMIT_PCT / 100 + 0.05], None)
    assert drift["noisy"] and "drifted" in drift["reason"] and drift["others_cores"] is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the CPU probe reads Linux's /proc")
def test_cpu_probe_sees_a_busy_loop_in_another_process():
    from lana.noise import CpuProbe

    probe = CpuProbe.start()
    subprocess.run([sys.executable, "-c", BUSY.format(seconds=1.5)], check=True)
    assert probe.others_cores() > 0.5


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the CPU probe reads Linux's /proc")
def test_a_table_timed_under_a_busy_loop_started_half_way_is_flagged_or_retimed(teacher):
    from lana.noise import OTHERS_CORES_LIMIT

    rounds, per_round = 4, max(map(len, SPECS)) + 1  # in-network: one call per student, plus the teacher
    meter = LoadStartingMeter(batch_size=2, threads=1, repeats=80, warmup=1, start_at=rounds * per_round // 2)
    try:
        table = measure_table(teacher, LAYERS, SPECS, build, meter, "cpu-b2", progress=False,
                              input_shape=INPUT_SHAPE, rounds=rounds, max_retimes=1)  # fmt: skip
    finally:
        for proc in meter.procs:
            proc.kill()
            proc.wait()
    noise = table.fingerprint["noise"]
    assert meter.procs, "the busy loop never started"
    assert noise["attempts"][0]["others_cores"] > OTHERS_CORES_LIMIT  # the load was detected...
    assert table.noisy or len(noise["attempts"]) == 2  # ...and the table flagged, or timed again
    if not table.noisy:  # re-timed back within the thresholds (the loops ended in between)
        assert noise["others_cores"] <= OTHERS_CORES_LIMIT


def test_a_flagged_table_is_shown_by_info_and_warned_about_by_solve(tmp_path):
    from helpers import edited_library

    from lana.cli import main
    from lana.library import format_info, read_info
    from lana.synthetic import write_random_library

    path = write_random_library(tmp_path / "lib.h5", 4, 6, seed=0, tables=("cpu-b1", "cpu-b64"))
    reason = "other processes used 1.20 cores (limit 0.3)"
    with edited_library(path) as f:
        f["latency_tables/cpu-b1"].attrs["noisy"] = True
        f["latency_tables/cpu-b1"].attrs["fingerprint"] = json.dumps({"noise": {"reason": reason, "noisy": True}})
    assert f"NOISY ({reason})" in format_info(read_info(path))
    done = subprocess.run([sys.executable, "-m", "lana", "solve", str(path), "--budget", "0.8x", "--table", "cpu-b1"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "flagged noisy" in done.stderr and "--retime cpu-b1" in done.stderr
    quiet = subprocess.run([sys.executable, "-m", "lana", "solve", str(path), "--budget", "0.8x", "--table", "cpu-b64"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert quiet.returncode == 0 and "noisy" not in quiet.stderr
    assert main(["solve", str(path), "--budget", "0.8x", "--table", "cpu-b1", "--json"]) == 0


def test_retime_replaces_a_stored_table(tiny_library, tmp_path):
    import shutil

    from lana.cli import main
    from lana.library import Library

    path = tmp_path / "copy.h5"
    shutil.copyfile(tiny_library[0], path)
    before = Library(path).table("cpu-b1")
    assert main(["latency", str(path), "--retime", "cpu-b1", "--rounds", "1"]) == 0
    after = Library(path).table("cpu-b1")
    assert after["created"] != before["created"] and "noise" in after["fingerprint"]
    assert after["threads"] == before["threads"]


def test_ort_names_are_one_table():
    from lana.table_names import canonical_table, parse_table_name

    assert parse_table_name("ort-b1") == parse_table_name("cpu-ort-b1") == {
        "device": "cpu", "backend": "onnxruntime", "batch_size": 1}  # fmt: skip
    assert canonical_table("ort-b64") == "cpu-ort-b64" and canonical_table("cpu-b1") == "cpu-b1"
    with pytest.raises(ValueError, match="must end in -b<batch size>"):
        parse_table_name("ort-x")


def test_openvino_names_are_one_table_and_time_a_tiny_conv():
    from lana.meters import OpenVinoMeter
    from lana.table_names import canonical_table, parse_table_name

    assert parse_table_name("ov-b1") == parse_table_name("cpu-ov-b1") == {
        "device": "cpu", "backend": "openvino", "batch_size": 1}  # fmt: skip
    assert canonical_table("ov-b64") == "cpu-ov-b64"
    with pytest.raises(ValueError, match="CPU only"):
        make_meter("cuda", "openvino", 1)
    pytest.importorskip("openvino")
    timing = OpenVinoMeter(batch_size=2, threads=1, repeats=3, warmup=1)(nn.Conv2d(3, 8, 3), INPUT_SHAPE)
    assert len(timing.samples_ms) == 3 and timing.median_ms > 0


@pytest.mark.parametrize("table", ["ort-b1", "ov-b1"])
def test_deploy_runtime_tables_are_first_class_in_latency_and_solve(tiny_library, tmp_path, table, capsys):
    """`lana latency LIB --table ort-b1` (or ov-b1) adds the table; solve and the plan name it."""
    import shutil

    from lana.cli import main
    from lana.library import Library
    from lana.plan import solve_library
    from lana.problem import load_problem

    if table.startswith("ov"):
        pytest.importorskip("openvino")
    path = tmp_path / "lib.h5"
    shutil.copy(tiny_library[0], path)
    assert main(["latency", str(path), "--table", table, "--rounds", "1", "--threads", "1"]) == 0
    stored = "cpu-" + table
    assert stored in Library(path).tables
    # half-way between the fastest plan and the teacher: feasible whatever the timings (a fixed
    # 0.8x sat on the tiny library's fastest plan under OpenVINO, 2.4972 ms against 2.4973 ms)
    problem = load_problem(path, table=stored)
    fastest = problem.predicted_latency_ms([int(np.argmin(row)) for row in problem.latency[stored]])
    budget_ms = (fastest + problem.teacher_ms()) / 2
    plan = solve_library(path, f"{budget_ms}ms", table=table)
    assert plan.table == stored and plan.predicted_latency_ms <= plan.budget_ms == pytest.approx(budget_ms)


def test_latency_additivity_reports_the_error_against_the_teacher(capsys):
    """bench/latency_additivity.py: each student's predicted/measured ratio against the teacher's,
    both timed in the same check (free of the machine's drift since the table), for the random
    students and apart for the light ones; the scale correction is derived from the same timings."""
    from bench.latency_additivity import main

    main(["--model", "resnet10t", "--img-size", "32", "--batch-sizes", "1", "--students", "3",
          "--light-students", "2", "--variants", "in_network", "--repeats", "2", "--rounds", "1"])  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    for variant in ("in_network", "in_network_scale", "in_network_unscaled"):
        rows = [line for line in out if line.startswith(f"| {variant} | 1 |")]
        assert len(rows) == 1, (variant, out)
        cells = rows[0].strip(" |").split("|")
        for cell in cells[-3:]:  # vs teacher, light students, light vs teacher: median <= max
            median, worst = (float(x) for x in cell.split("/"))
            assert 0 <= median <= worst, (variant, cell)


def test_whole_fit_recovers_the_fixed_part_and_the_weight_term_of_students_timed_whole():
    """Students timed plain cost 0.2 ms + 1.1 x their blocks + 0.01 ms per MB of weights: the fit
    gives those back (the fixed part measured with timers, 0.35 ms, is not what it keeps)."""
    from lana.latency import _whole_fit

    rng = np.random.default_rng(0)
    latency = [rng.uniform(0.05, 0.5, 6) for _ in range(4)]
    mbytes = [rng.uniform(0.1, 8.0, 6) for _ in range(4)]
    samples = {"teacher": [0.2 + sum(1.1 * row[0] + 0.01 * mb[0] for row, mb in zip(latency, mbytes))] * 3}
    for _ in range(20):
        choices = tuple(int(rng.integers(6)) for _ in range(4))
        whole = 0.2 + sum(1.1 * row[c] + 0.01 * mb[c] for row, mb, c in zip(latency, mbytes, choices))
        samples["plain", choices] = [whole * (1 + e) for e in rng.normal(0, 0.002, 4)]
    fit = _whole_fit(samples, latency, mbytes, [0, 0, 0, 0])
    assert fit["fixed_ms"] == pytest.approx(0.2, abs=0.01)
    assert fit["block_factor"] == pytest.approx(1.1, abs=0.02)
    assert fit["ms_per_mb"] == pytest.approx(0.01, abs=0.002)
    assert fit["students"] == 21 and fit["max_abs_error_pct"] < 1.0
    # blocks timed alone that each carry a 0.03 ms call: the intercept goes negative (0.05 - 4 x
    # 0.03); it moves to the layers' numbers, which stay >= 0, and every prediction is kept
    calls = {k: [0.05 + sum(row[c] - 0.03 for row, c in zip(latency, k[1]))] * 2 for k in samples if k != "teacher"}
    fit = _whole_fit({"teacher": [0.05 + sum(row[0] - 0.03 for row in latency)], **calls}, latency, mbytes, [0] * 4)
    assert fit["intercept_ms"] == pytest.approx(-0.07, abs=1e-6) and fit["fixed_ms"] == 0.0
    folded = [fit["block_factor"] * row + fit["ms_per_mb"] * mb - shift
              for row, mb, shift in zip(latency, mbytes, fit["layer_shift_ms"])]  # fmt: skip
    assert min(map(np.min, folded)) >= 0
    for key, whole in calls.items():
        assert fit["fixed_ms"] + sum(row[c] for row, c in zip(folded, key[1])) == pytest.approx(whole[0], abs=1e-6)
    # heavier students faster at the same blocks' time: no weight term (it only adds time)
    lighter = {
        k: [v[0] - 0.015 * sum(mb[c] for mb, c in zip(mbytes, k[1]))] for k, v in samples.items() if k != "teacher"
    }
    assert _whole_fit({"teacher": samples["teacher"], **lighter}, latency, mbytes, [0, 0, 0, 0])["ms_per_mb"] == 0.0
    # students slower than their blocks can explain, with less time the more blocks they run: not
    # physical, so no fit (the table falls back to the per-table scale)
    upside_down = {k: [5.0 - 2 * sum(row[c] for row, c in zip(latency, k[1]))] * 2 for k in samples if k != "teacher"}
    assert _whole_fit({"teacher": [5.0], **upside_down}, latency, mbytes, [0, 0, 0, 0]) is None


def test_in_network_table_folds_the_whole_student_fit_into_its_numbers(teacher):
    """A table timed on the CPU records the correction it used; where the whole-student fit was
    kept, its fixed part is the table's; ``correction="scale"`` keeps the per-table factor."""
    table = measure_table(teacher, LAYERS, SPECS, build, TorchMeter(repeats=4, threads=1), "t", progress=False,
                          input_shape=INPUT_SHAPE, rounds=2)  # fmt: skip
    how = table.fingerprint
    assert how["correction"] in ("whole_fit", "scale") and "raw_fixed_ms" in how
    if how["correction"] == "whole_fit":
        fit = how["whole_fit"]
        assert table.fixed_ms == fit["fixed_ms"] and fit["students"] >= 6
        assert 0.5 <= fit["block_factor"] <= 2.0
    scale_table = measure_table(teacher, LAYERS, SPECS, build, TorchMeter(repeats=4, threads=1), "t",
                                progress=False, input_shape=INPUT_SHAPE, rounds=2, correction="scale")  # fmt: skip
    assert scale_table.fingerprint["correction"] == "scale" and "whole_fit" not in scale_table.fingerprint
    with pytest.raises(ValueError, match="unknown correction 'nope': whole_fit or scale"):
        measure_table(teacher, LAYERS, SPECS, build, TorchMeter(repeats=1), "t", progress=False,
                      input_shape=INPUT_SHAPE, correction="nope")  # fmt: skip


_FAULTS = """
import resource, sys, torch
from torch import nn
import lana.meters as m
if sys.argv[1] == "timed":
    m.TorchMeter(batch_size=1, threads=1, repeats=1, warmup=0)(nn.Conv2d(3, 4, 1), (3, 8, 8))
torch.empty(1 << 24).fill_(1.0)  # 64 MiB, freed at once
faults = []
for _ in range(3):  # the fewest of three: the host may reclaim an idle page once (CI failed on one, 16,384)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(1 << 24).fill_(1.0)  # the same again
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(m._KEPT, min(faults))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's settings are glibc's")
def test_a_cpu_timing_keeps_freed_memory_so_a_pass_does_not_fault_its_tensors_in_again():
    """By default a 64 MiB tensor freed and made again faults in 16,384 fresh pages (glibc hands it
    to mmap); once a CPU meter has timed anything in the process, freed memory is kept and reused."""

    def run(mode):
        done = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True,
                              timeout=300)  # fmt: skip
        kept, faults = done.stdout.split()
        return kept, int(faults)

    for _ in range(3):  # a fresh process up to three times (the cause of CI's one miss was not found)
        kept, faults = run("timed")
        if faults < 64:
            break
    assert kept == "True" and faults < 64
    kept, faults = run("untimed")
    assert kept == "None" and faults > 10_000
