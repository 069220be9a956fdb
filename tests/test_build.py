"""The library build (issue 4): complete tiny builds, resuming after a kill, weights round trip, info schema."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lana.context import load_candidate, load_library_teacher
from lana.library import read_info
from lana.pipeline import BuildConfig, build


def test_tiny_build_is_complete_with_every_stage(tiny_library):
    out, result = tiny_library
    info = read_info(out)
    assert info["complete"] is True
    assert [layer["name"] for layer in info["layers"]] == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    for layer in info["layers"]:
        specs = [c["spec"] for c in layer["candidates"]]
        assert specs[0] == "teacher"
        for cand in layer["candidates"]:
            assert cand["latency_ms"]["cpu-b1"] > 0
            assert set(cand["scores"]) == {"top1_drop", "ce_delta", "kl"}
            if cand["spec"] == "teacher":
                assert cand["scores"] == {"top1_drop": 0.0, "ce_delta": 0.0, "kl": 0.0}
                assert cand["distill_loss"] == 0.0
            elif cand["spec"] != "id":
                assert cand["distill_loss"] is not None and cand["distill_loss"] >= 0
    assert result.stages_s.keys() >= {"distill", "score", "latency"}


def test_candidate_from_library_reproduces_trained_output_bit_for_bit(tiny_library):
    out, _ = tiny_library
    trained = torch.load(out.with_name(out.name + ".work") / "chunk_0.weights.pt", weights_only=True)
    key = next(k for k in trained if k.startswith("1/"))
    layer_index, spec = key.split("/", 1)
    from lana.context import context_from_library

    ctx = context_from_library(out)
    reference = ctx.build(int(layer_index), spec)
    reference.load_state_dict(trained[key])
    loaded = load_candidate(out, int(layer_index), spec)
    x = torch.randn(4, *ctx.layers[int(layer_index)].in_shape)
    assert torch.equal(reference.eval()(x), loaded(x))


def test_library_teacher_is_the_built_teacher(tiny_library):
    out, _ = tiny_library
    teacher = load_library_teacher(out)
    with h5py.File(out) as f:
        stored = f["teacher_weights/fc.weight"][()]
    assert np.array_equal(teacher.fc.weight.detach().numpy(), stored)


def test_info_json_schema(tiny_library):
    out, _ = tiny_library
    result = subprocess.run(
        [sys.executable, "-m", "lana", "info", str(out), "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert isinstance(info["complete"], bool)
    assert {"model", "num_classes", "img_size"} <= info["teacher"].keys()
    assert info["config"]["space"] == "tiny"
    layer = info["layers"][0]
    assert {"name", "in_shape", "out_shape", "candidates"} <= layer.keys()
    assert {"spec", "params", "macs", "distill_loss", "scores", "latency_ms"} <= layer["candidates"][0].keys()
    table = info["latency_tables"][0]
    assert {"name", "device", "backend", "batch_size", "fixed_ms"} <= table.keys()
    text = subprocess.run([sys.executable, "-m", "lana", "info", str(out)], capture_output=True, text=True, timeout=120)
    assert "layer1.0" in text.stdout and "complete" in text.stdout


def test_info_without_torch(tiny_library):
    out, _ = tiny_library
    code = f"import sys; from lana.library import read_info; read_info({str(out)!r}); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_killed_build_resumes_and_completes(tmp_path):
    out = tmp_path / "killed.h5"
    work = tmp_path / "killed.h5.work"
    cmd = [
        sys.executable,
        "-m",
        "lana",
        "build",
        "--model",
        "resnet10t",
        "--space",
        "tiny",
        "--max-steps",
        "400",
        "--batch-size",
        "16",
        "--limit",
        "256",
        "--score-images",
        "32",
        "--device",
        "cpu",
        "--tables",
        "cpu-b1",
        "--latency-rounds",
        "1",
        "--threads",
        "1",
        "--checkpoint-every",
        "0",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (work / "chunk_0.ckpt.pt").exists():
            time.sleep(0.2)
        assert (work / "chunk_0.ckpt.pt").exists(), "no checkpoint appeared"
        time.sleep(1.0)
    finally:  # never leave the build running, whatever happened
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists(), "a killed build must not leave a library behind"
    step_at_kill = torch.load(work / "chunk_0.ckpt.pt", weights_only=True)["step"]
    assert 0 < step_at_kill < 400
    resumed = subprocess.run(
        cmd[: cmd.index("--max-steps") + 1] + ["400"] + cmd[cmd.index("--max-steps") + 2 :],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step" in resumed.stderr
    assert read_info(out)["complete"] is True
    assert not work.exists()


def test_work_dir_of_other_settings_is_not_resumed(tmp_path, tiny_build):
    out = tmp_path / "lib.h5"
    work = tmp_path / "lib.h5.work"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"model": "resnet50"}))
    with pytest.raises(ValueError, match="--restart"):
        build(BuildConfig(**tiny_build), out)


def test_latency_cli_adds_a_second_table_and_checks_it(tiny_library, tmp_path):
    import shutil

    src, _ = tiny_library
    lib = tmp_path / "copy.h5"
    shutil.copyfile(src, lib)
    cmd = [sys.executable, "-m", "lana", "latency", str(lib), "--batch-size", "2", "--threads", "1", "--rounds", "1"]
    added = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stderr[-2000:]
    tables = {t["name"] for t in read_info(lib)["latency_tables"]}
    assert tables == {"cpu-b1", "cpu-b2"}
    assert all(c["latency_ms"]["cpu-b2"] > 0 for layer in read_info(lib)["layers"] for c in layer["candidates"])
    checked = subprocess.run(cmd + ["--check", "2"], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr[-2000:]
    assert "checking the stored table cpu-b2" in checked.stdout
    assert "%" in checked.stdout.strip().splitlines()[-1]  # one-line summary with the errors


def test_a_training_split_smaller_than_a_batch_distils_in_one_batch(tmp_path, tiny_build, caplog):
    """A small folder must build, as fit() trains it: the distillation's batch shrinks to the split
    (it raised 'fewer than one batch' before)."""
    import logging

    caplog.set_level(logging.WARNING, logger="lana.distill")
    result = build(BuildConfig(**{**tiny_build, "limit": 20, "max_steps": 1, "batch_size": 32}), tmp_path / "lib.h5")
    assert Path(result.path).exists()
    assert any("fewer than a batch of 32: batches of 20" in r.getMessage() for r in caplog.records)
