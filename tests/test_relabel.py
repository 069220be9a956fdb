"""bench.relabel: cached rows cross a correction of a stage's file list only when the files that
made them are, byte for byte, the ones the corrected list covers."""

import json
import shutil
import subprocess

import pytest

import bench.relabel as rl
from bench.provenance import STAGES, code_digests


def test_the_competitors_take_from_lana_accelerate_only_what_lana_meters_defines():
    """lana/accelerate.py is not in the competitors' stage because bench.baselines imports only
    its re-export of measure_latency: if accelerate ever defines its own, the stage must list it."""
    import lana.accelerate
    import lana.meters

    assert lana.accelerate.measure_latency is lana.meters.measure_latency
    assert "lana/accelerate.py" not in STAGES["competitors"] and "lana/meters.py" in STAGES["competitors"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_commit_is_digested_by_its_own_definition_and_by_this_one():
    try:
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=rl.ROOT, capture_output=True, check=True, timeout=10)
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("not a git checkout")
    own, ours = rl.digests_at("HEAD")
    assert set(own) == set(ours) == set(STAGES)
    edited = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "bench/provenance.py"], cwd=rl.ROOT, timeout=10)
    if edited.returncode == 0:  # HEAD's definition is this one: both digests of its tree agree
        assert own == ours


def _row(path, code, stage="competitors"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": {"code": code, "seed": 0}, "row": {"method": "prune", "code": code,
                                                                          "stage": stage}, "points": []}))  # fmt: skip


def test_rows_of_the_old_digest_are_relabelled_and_others_left(tmp_path, monkeypatch):
    now = code_digests()["competitors"]
    own = {**code_digests(), "competitors": "0ld0ld0ld0ld0ld0"}
    monkeypatch.setattr(rl, "commit", lambda root: "abc1234")
    monkeypatch.setattr(rl, "digests_at", lambda rev, root: (own, code_digests()))
    _row(tmp_path / "competitors/0.5x/prune/row.json", "0ld0ld0ld0ld0ld0")
    _row(tmp_path / "competitors/0.5x/prune/seed1/row.json", "0ld0ld0ld0ld0ld0")
    _row(tmp_path / "0.5x/lana/row.json", "1ana1ana1ana1ana", stage="lana")
    (tmp_path / "competitors/0.5x/fastnas").mkdir(parents=True)
    (tmp_path / "competitors/0.5x/fastnas/failure.json").write_text(json.dumps({"key": {"code": "0ld0ld0ld0ld0ld0"},
                                                                                 "error": "E"}))  # fmt: skip

    assert len(rl.relabel(tmp_path, "abc1234", dry_run=True)) == 3
    assert json.loads((tmp_path / "competitors/0.5x/prune/row.json").read_text())["key"]["code"] == "0ld0ld0ld0ld0ld0"
    changed = rl.relabel(tmp_path, "abc1234")
    assert len(changed) == 3
    row = json.loads((tmp_path / "competitors/0.5x/prune/seed1/row.json").read_text())
    assert row["key"]["code"] == row["row"]["code"] == now
    assert row["row"]["relabelled"] == {"from": "0ld0ld0ld0ld0ld0", "commit": "abc1234"}
    assert json.loads((tmp_path / "competitors/0.5x/fastnas/failure.json").read_text())["key"]["code"] == now
    assert json.loads((tmp_path / "0.5x/lana/row.json").read_text())["key"]["code"] == "1ana1ana1ana1ana"
    assert rl.relabel(tmp_path, "abc1234") == []  # done once


def test_rows_made_by_other_files_are_never_relabelled(tmp_path, monkeypatch):
    own = {**code_digests(), "competitors": "0ld0ld0ld0ld0ld0"}
    ours = {**code_digests(), "competitors": "d1ffe4e4d1ffe4e4"}  # the stage's files changed since
    monkeypatch.setattr(rl, "commit", lambda root: "abc1234")
    monkeypatch.setattr(rl, "digests_at", lambda rev, root: (own, ours))
    _row(tmp_path / "competitors/0.5x/prune/row.json", "0ld0ld0ld0ld0ld0")
    with pytest.raises(ValueError, match="differ between abc1234"):
        rl.relabel(tmp_path, "abc1234")
    assert json.loads((tmp_path / "competitors/0.5x/prune/row.json").read_text())["key"]["code"] == "0ld0ld0ld0ld0ld0"

    monkeypatch.setattr(rl, "commit", lambda root: "abc1234+dirty")
    with pytest.raises(ValueError, match="uncommitted"):
        rl.relabel(tmp_path, "abc1234")
    with pytest.raises(ValueError, match="unknown stage"):
        rl.relabel(tmp_path, "abc1234", stage="nope")


def test_the_kept_timings_are_keyed_by_the_meter_that_made_them(tmp_path):
    """The teacher's timing and the siblings' factors are kept across runs; a change to the CPU
    meter (lana/meters.py) must time them again, a change elsewhere must not."""
    from bench.provenance import meter_digest

    (tmp_path / "lana").mkdir()
    (tmp_path / "lana/meters.py").write_text("def measure(): pass\n")
    (tmp_path / "lana/other.py").write_text("x = 1\n")
    before = meter_digest.__wrapped__(tmp_path)
    (tmp_path / "lana/other.py").write_text("x = 2\n")
    assert meter_digest.__wrapped__(tmp_path) == before
    (tmp_path / "lana/meters.py").write_text("def measure(): return 1\n")
    assert meter_digest.__wrapped__(tmp_path) != before
    assert len(meter_digest()) == 8
