"""The package's shape: import names, the console script, torch-free start-up."""

import subprocess
import sys


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_subpackages_import_only_under_lana(tmp_path):
    done = _run("import lana.candidates, lana.solver; print('ok')", tmp_path)
    assert done.returncode == 0, done.stderr
    for top in ("candidates", "solver"):
        result = _run(f"import {top}", tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_import_lana_does_not_import_torch(tmp_path):
    result = _run("import sys, lana; print('torch' in sys.modules)", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_python_dash_m_lana_prints_help(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lana", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "teacher" in result.stdout and "candidates" in result.stdout


def test_console_script_matches_module(tmp_path):
    import shutil

    exe = shutil.which("lana")
    assert exe is not None, "console script 'lana' is not installed"
    result = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "teacher" in result.stdout
