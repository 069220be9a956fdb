"""Where a benchmark figure came from (issue 25 item 6): the source it depends on, the machine.

Every cached artefact of the benchmark (teacher, library, each method's row) carries the digest of
the source files *its stage* depends on, and the CPU it was made on. A change to the report
invalidates nothing; a change to distillation invalidates the library and what was made from it;
a change to lana's solver or fine-tuning retrains lana's rows but not the competitors, which are
cached apart (issue 25 item 3), keyed by their own stage.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import cache
from pathlib import Path

__all__ = ["ROOT", "STAGES", "code_digest", "code_digests", "commit", "cpu_model", "meter_digest", "stale_rows"]

ROOT = Path(__file__).resolve().parent.parent

# Source each stage's output depends on (globs from the repository root); a stage includes the
# stages it is built on, so a digest changes whenever anything upstream changes. The benchmark's
# data sets are in memory (Fashion-MNIST), so the image-folder modules (streamed, stream, folder)
# are not listed: they cannot change a benchmark figure.
_DATA = ["lana/data.py", "lana/train.py", "lana/dist.py", "lana/files.py"]
STAGES: dict[str, list[str]] = {
    # the workload's settings (model, epochs, ...) are compared apart, so bench/workloads.py is not here
    "teacher": [*_DATA, "lana/teacher.py"],
    "library": [
        *_DATA,
        "lana/teacher.py",
        "lana/distill.py",
        "lana/score.py",
        "lana/pipeline.py",
        "lana/layers.py",
        "lana/context.py",
        "lana/latency.py",
        "lana/meters.py",
        "lana/noise.py",
        "lana/calibrate.py",
        "lana/calibration.py",
        "lana/library/*.py",
        "candidates/*.py",
    ],
    # lana's own students (and the plans of its library: random, greedy), on top of the library
    "lana": [
        "lana/finetune.py",
        "lana/accelerate.py",
        "lana/student.py",
        "lana/plan.py",
        "lana/problem.py",
        "lana/select.py",
        "lana/paired.py",
        "lana/head.py",
        "solver/*.py",
        "bench/__init__.py",
        "bench/baselines.py",
    ],  # fmt: skip
    # what a user would do instead, and the uniform-slim ablation: the teacher, not the library.
    # Not lana/accelerate.py: listing it retrained every competitor at each change of lana's closed
    # loop (5c8b917). The latency match times paired (lana/paired.py), in shipped form
    # (candidates/fuse.py, rep.py and the blocks rep fuses), on lana/table_names.py's tables
    "competitors": [
        *_DATA,
        "lana/teacher.py",
        "lana/finetune.py",
        "lana/meters.py",
        "lana/latency.py",
        "lana/layers.py",
        "lana/distill.py",  # capture_io: uniform slim's least-squares start (bench.baselines)
        "lana/paired.py",
        "lana/table_names.py",
        "candidates/fuse.py",
        "candidates/rep.py",
        "candidates/blocks.py",
        "candidates/slim.py",
        "candidates/lsq.py",
        "bench/competitors.py",
        "bench/baselines.py",
        "bench/workloads.py",
    ],  # fmt: skip
}


def _files(patterns: list[str], root: Path) -> list[Path]:
    found = set()
    for pattern in patterns:
        found.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(found)


@cache
def code_digest(stage: str, root: str | os.PathLike = ROOT) -> str:
    """The first 16 hex digits of the SHA-256 over ``stage``'s source files (paths and bytes).

    The library's and lana's digests include the upstream stages' files.
    """
    root = Path(root)
    patterns = list(STAGES[stage])
    if stage == "lana":
        patterns += STAGES["library"]
    digest = hashlib.sha256()
    for path in _files(patterns, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@cache
def meter_digest(root: str | os.PathLike = ROOT) -> str:
    """The first 8 hex digits of the SHA-256 over the CPU meters' source (``lana/meters.py``).

    It keys the timings the benchmark keeps across runs (the teacher's, the siblings' factors):
    a change to how the CPU is timed (fba1554: freed memory kept, the teacher 1.4x faster on the
    AMD EPYC VM) times them again, where the CPU alone would have kept the old meter's figures.
    """
    return hashlib.sha256((Path(root) / "lana/meters.py").read_bytes()).hexdigest()[:8]


def code_digests(root: str | os.PathLike = ROOT) -> dict[str, str]:
    """Every stage's digest (what a result records once for the run)."""
    return {stage: code_digest(stage, root) for stage in STAGES}


@cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def commit(root: str | os.PathLike = ROOT) -> str:
    """The commit the code came from: ``LANA_COMMIT`` (set when running from a ``git archive``
    snapshot, which has no ``.git``), else ``git rev-parse HEAD`` plus ``+dirty`` for local edits."""
    if os.environ.get("LANA_COMMIT"):
        return os.environ["LANA_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def stale_rows(result: dict) -> list[str]:
    """``method@budget (seed n)`` of every row whose stage digest differs from the run's own.

    A run records the digests of the code it ran (``result["code"]``); each row records the digest
    of the stage that made it (``row["code"]``). A row reused from a cache made by other code is
    stale: the report refuses such a mix unless asked, and then marks each one.
    """
    run = result.get("code") or {}
    stale = []
    for row in result["rows"]:
        stage = row.get("stage")
        if stage and row.get("code") and run.get(stage) and row["code"] != run[stage]:
            stale.append(f"{row['method']}@{row['budget']} (seed {row.get('seed', 0)})")
    return stale
