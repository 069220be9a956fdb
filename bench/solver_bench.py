"""Benchmarks of the ILP (issue 6): every backend on random libraries, medians of repeated runs.

    python3 bench/solver_bench.py                 # all backends, prints a Markdown table
    python3 bench/solver_bench.py --backends highs cpsat --repeats 5 --json out.json

Workloads (libraries from `lana.synthetic.write_random_library`, fixed seeds):

* ``solve 50x200``: in-process `lana.solver.solve` on 3 libraries x budgets 0.3x..0.7x (library
  already loaded; the first, untimed solve pays for the imports). Target with HiGHS: < 0.2 s.
* ``solve 100x500``: the same on 100 layers x 500 candidates. Target: < 1 s.
* ``pareto 20 budgets``: `lana.plan.pareto` over 20 budgets 0.2x..1.0x on 50 x 200, library read
  included. Target: < 3 s.
* ``lana solve wall``: ``python3 -m lana.cli.solve solve LIB --budget 0.5x`` on 50 x 200, the
  whole process (interpreter, imports, read, solve, print). Target: < 1 s.

Each backend runs in its own process: two copies of HiGHS (highspy, OR-Tools) must never meet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("highs", "cbc", "pulp-highs", "cpsat")
FACTORS = (0.3, 0.4, 0.5, 0.6, 0.7)
SEEDS = (0, 1, 2)
WORKLOADS = ("solve 50x200", "solve 100x500", "pareto 20 budgets", "lana solve wall")


def _libraries(folder: Path) -> dict[str, list[Path]]:
    from lana.synthetic import write_random_library

    libraries = {"50x200": [], "100x500": []}
    for size, (layers, candidates) in (("50x200", (50, 200)), ("100x500", (100, 500))):
        for seed in SEEDS:
            path = folder / f"lib_{size}_{seed}.h5"
            if not path.exists():
                write_random_library(path, layers, candidates, seed=1000 + seed)
            libraries[size].append(path)
    return libraries


def _worker(backend: str, folder: Path, repeats: int) -> dict[str, float]:
    """Runs the in-process workloads with one backend; returns median seconds per workload."""
    from lana import solver
    from lana.plan import pareto
    from lana.problem import load_problem

    libraries = _libraries(folder)
    medians = {}
    for size in ("50x200", "100x500"):
        problems = [load_problem(path) for path in libraries[size]]
        solver.solve(problems[0], 0.5 * problems[0].teacher_ms(), solver=backend)  # imports
        times = []
        for _ in range(repeats):
            for problem in problems:
                for factor in FACTORS:
                    start = time.perf_counter()
                    solver.solve(problem, factor * problem.teacher_ms(), solver=backend)
                    times.append(time.perf_counter() - start)
        medians[f"solve {size}"] = statistics.median(times)
    budgets = [f"{0.2 + i * 0.8 / 19:.4f}x" for i in range(20)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        plans = pareto(libraries["50x200"][0], budgets, solver=backend)
        times.append(time.perf_counter() - start)
        assert len(plans) == 20
    medians["pareto 20 budgets"] = statistics.median(times)
    return medians


def _cli_wall(backend: str, library: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "lana.cli.solve", "solve", str(library), "--budget", "0.5x", "--solver", backend],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each workload")
    parser.add_argument("--dir", type=Path, help="where the libraries go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the medians here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.dir, args.repeats)))
        return 0
    folder = args.dir or Path(tempfile.mkdtemp(prefix="lana-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    library = _libraries(folder)["50x200"][0]
    table = {}
    for backend in args.backends:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", backend, "--dir", str(folder), "--repeats", str(args.repeats)],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.exit(f"{backend} worker failed:\n{done.stderr}")
        table[backend] = json.loads(done.stdout)
        table[backend]["lana solve wall"] = _cli_wall(backend, library, max(args.repeats, 5))
        print(f"{backend}: " + ", ".join(f"{k} {v:.3f} s" for k, v in table[backend].items()), file=sys.stderr)
    print("| backend | " + " | ".join(WORKLOADS) + " |")
    print("|---|" + "---:|" * len(WORKLOADS))
    for backend, medians in table.items():
        print(f"| {backend} | " + " | ".join(f"{medians[w]:.3f}" for w in WORKLOADS) + " |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
