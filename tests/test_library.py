"""The library file's owner: header checks, checksums on every dataset and the attributes, and
what a user sees when a file is damaged, old, or not a library."""

import json
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from lana.library import FORMAT_VERSION, Library, LibraryError, read_info
from lana.problem import load_problem
from lana.synthetic import write_random_library


@pytest.fixture()
def library(tmp_path):
    return write_random_library(tmp_path / "lib.h5", 6, 8, seed=1, tables=("cpu-b1", "cpu-b64"))


def _overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _dataset_offset(path, name: str) -> int:
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lana", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_a_written_library_carries_checksums_and_reads_back(library):
    lib = Library(library)
    assert lib.format_version == FORMAT_VERSION == 2
    assert lib.complete and len(lib.layers()) == 6 and set(lib.tables) == {"cpu-b1", "cpu-b64"}
    with h5py.File(library, "r") as f:
        sums = json.loads(f.attrs["checksums"])
    assert "layers/000/scores/kl" in sums["datasets"] and len(sums["attrs"]) == 64


def test_damaged_bytes_in_a_dataset_are_named(library):
    name = "layers/002/latency/cpu-b1"
    _overwrite(library, _dataset_offset(library, name), b"\x7f" * 16)
    with pytest.raises(LibraryError, match=f"damaged: dataset {name} does not match its checksum"):
        load_problem(library)
    with pytest.raises(LibraryError, match="damaged"):
        read_info(library)


def test_four_kilobytes_of_noise_in_the_middle_are_never_read_silently(tmp_path):
    for seed in range(4):
        path = write_random_library(tmp_path / f"n{seed}.h5", 16, 30, seed=seed)
        size = path.stat().st_size
        rng = np.random.default_rng(seed)
        _overwrite(path, size // 2 - 2048, rng.bytes(4096))
        with pytest.raises(LibraryError, match="damaged|not a readable HDF5"):
            load_problem(path)


def test_an_attribute_changed_behind_the_librarys_back_is_named(library):
    with h5py.File(library, "r+") as f:
        f["latency_tables/cpu-b1"].attrs["fixed_ms"] = 0.0
    with pytest.raises(LibraryError, match="attributes .* do not match their checksum"):
        Library(library)


def test_a_format_1_library_without_checksums_still_loads(library, caplog):
    with h5py.File(library, "r+") as f:
        del f.attrs["checksums"]
        f.attrs["format_version"] = 1
    problem = load_problem(library)
    assert len(problem.layers) == 6
    assert "without checksums" in caplog.text


def test_other_versions_and_layouts_get_a_message_that_says_what_to_do(tmp_path, library):
    with h5py.File(library, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(LibraryError, match="format_version 99.*rebuild it"):
        Library(library)
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f.attrs["format"] = "lana-library"
        f.attrs["format_version"] = 2
    with pytest.raises(LibraryError, match="has no layers"):
        Library(bare)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(LibraryError, match="not a readable HDF5 file"):
        Library(text)
    with pytest.raises(LibraryError, match="does not exist"):
        Library(tmp_path / "missing.h5")


def test_solve_and_info_exit_1_and_name_the_damage(library):
    name = "layers/001/scores/kl"
    _overwrite(library, _dataset_offset(library, name), b"\x7f" * 8)  # the teacher's 0.0 becomes ~1e308
    for command in (["solve", library, "--budget", "0.5x"], ["info", library]):
        done = _cli(*command)
        assert done.returncode == 1, done.stderr
        assert f"damaged: dataset {name}" in done.stderr


def test_a_damaged_candidate_weight_is_named_when_loaded(tiny_library, tmp_path):
    from lana.context import load_candidate

    source, _ = tiny_library
    path = tmp_path / "copy.h5"
    shutil.copyfile(source, path)
    lib = Library(path)
    index, spec = next(iter(lib.all_weights()))
    with h5py.File(path, "r") as f:
        key = f"layers/{index:03d}/weights/{spec}"
        tensor = sorted(f[key])[0]
    _overwrite(path, _dataset_offset(path, f"{key}/{tensor}"), b"\x55" * 4)
    assert load_problem(path).layers  # the ILP's arrays are intact: solve still works
    with pytest.raises(LibraryError, match=f"damaged: dataset {key}/{tensor}"):
        load_candidate(path, index, spec)


def test_same_build_lists_what_differs(library):
    lib = Library(library)
    assert lib.same_build({"synthetic": lib.config["synthetic"]}) == {}
    assert lib.same_build({"space": "compact"}) == {"space": (None, "compact")}
