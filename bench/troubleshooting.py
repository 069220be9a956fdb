"""The README's troubleshooting table: each common mistake run against a tiny library, and the
line lana prints for it.

    python3 bench/troubleshooting.py   # ~40 s on 2 cores; prints the Markdown table
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["--model", "resnet10t", "--img-size", "32", "--space", "tiny", "--max-steps", "3", "--batch-size", "32",
        "--limit", "256", "--score-images", "64", "--device", "cpu", "--tables", "cpu-b1", "--latency-rounds", "1",
        "--threads", "1"]  # fmt: skip


def lana(*args) -> tuple[int, list[str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lana", "-q", *map(str, args)], capture_output=True, text=True, env=env
    )
    return done.returncode, (done.stderr.strip() or done.stdout.strip()).splitlines()


def _edited(work: Path, plan: dict, name: str, change) -> Path:
    data = dict(plan)
    change(data)
    path = work / name
    path.write_text(json.dumps(data))
    return path


def _inputs(work: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny library, its plan, and the broken files the cases use."""
    lib = work / "lib.h5"
    assert lana("build", *TINY, "--out", lib)[0] == 0
    assert lana("solve", lib, "--budget", "0.7x", "--out", work / "plan.json")[0] == 0
    plan = json.loads((work / "plan.json").read_text())
    first = next(iter(plan["choices"]))
    files = {
        "missing": _edited(
            work,
            plan,
            "missing.json",
            lambda d: d.update(choices={k: v for k, v in d["choices"].items() if k != first}),
        ),  # fmt: skip
        "other": _edited(work, plan, "other.json", lambda d: d.update(model="resnet50")),
        "nochoices": _edited(work, plan, "nochoices.json", lambda d: d.pop("choices")),
        "text": work / "notckpt.pt",
        "noise": work / "noise.h5",
        "damaged": work / "damaged.h5",
    }
    files["text"].write_text("hello")
    files["noise"].write_bytes(os.urandom(4096))
    data = bytearray(lib.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)
    files["damaged"].write_bytes(bytes(data))
    return lib, files


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="trouble-"))
    lib, f = _inputs(work)
    cases = [
        ("a plan missing a layer", ["assemble", lib, "--plan", f["missing"], "--out", work / "s"]),
        ("a plan for another teacher", ["assemble", lib, "--plan", f["other"], "--out", work / "s"]),
        ("a plan without `choices`", ["assemble", lib, "--plan", f["nochoices"], "--out", work / "s"]),
        ("the same build again", ["build", *TINY, "--out", lib]),
        ("a build of other settings onto a complete library", ["build", *TINY, "--seed", "1", "--out", lib]),
        ("a budget without unit", ["solve", lib, "--budget", "3.2"]),
        ("a negative budget", ["solve", lib, "--budget", "-1x"]),
        ("an infeasible budget", ["solve", lib, "--budget", "0.01x"]),
        (
            "an extra budget on a table the library lacks",
            ["solve", lib, "--budget", "0.7x", "--extra-budget", "nosuch=0.5x"],
        ),
        (
            "a text file as checkpoint",
            ["build", "--model", "resnet10t", "--checkpoint", f["text"], "--limit", "64", "--out", work / "x.h5"],
        ),  # fmt: skip
        ("an unknown model", ["candidates", "--model", "resnet_18"]),
        ("an image size below the total stride", ["candidates", "--model", "resnet10t", "--img-size", "7"]),
        ("a file that is not a library", ["info", f["noise"]]),
        ("4 KB of noise in the middle of a library", ["solve", f["damaged"], "--budget", "0.7x"]),
        (
            "the same damaged library, assembled",
            ["assemble", f["damaged"], "--plan", work / "plan.json", "--out", work / "s2"],
        ),
        ("a missing library", ["info", work / "nosuch.h5"]),
    ]
    print("| mistake | command | exit | what lana prints |\n|---|---|---:|---|")
    for what, args in cases:
        rc, lines = lana(*args)
        shown = " ".join(str(a).replace(f"{work}/", "") for a in args)
        text = next(
            (x for x in lines if "error" in x or "infeasible" in x or "nothing to do" in x), lines[-1] if lines else ""
        )
        text = text.replace(f"{work}/", "").replace("|", "\\|")
        print(f"| {what} | `lana {shown}` | {rc} | {text} |")


if __name__ == "__main__":
    main()
