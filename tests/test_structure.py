"""The code's shape: one owner of the library file, no import cycles, short functions, lint-clean."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the package's folders, and the module names they are imported as
PACKAGES = {"lana": "lana", "candidates": "lana.candidates", "solver": "lana.solver"}


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_only_the_library_package_opens_hdf5_files():
    offenders = []
    for folder in ("lana", "candidates", "solver", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "lana" / "library"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "h5py.File" in line or "import h5py" in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "h5py outside lana/library:\n" + "\n".join(offenders)


def test_no_import_cycles_among_the_lana_modules():
    # lana/ only, as the structure issue asks; solver/'s backends import the package's data classes
    # while its __init__ imports a backend lazily by name, the plugin pattern, left as it is
    modules = {name: path for name, path in _modules().items() if path.is_relative_to(ROOT / "lana")}
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_an_import_inside_a_function(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from lana.pipeline import build\n")
    assert _imports("lana.x", a, {"lana.pipeline"}) == {"lana.pipeline"}
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lana.pipeline import build\n")
    assert _imports("lana.x", a, {"lana.pipeline"}) == set()


def test_no_function_in_lana_is_longer_than_80_lines():
    long = []
    for path in (ROOT / "lana").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)


@pytest.mark.skipif(shutil.which("ruff") is None and subprocess.run(
    [sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode != 0, reason="ruff is not installed")  # fmt: skip
def test_ruff_check_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_lazy_export_of_lana_resolves():
    import lana

    for name in lana.__all__:
        assert getattr(lana, name) is not None, name
    assert callable(lana.build) and callable(lana.solve_library)
