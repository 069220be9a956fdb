"""lana: latency-aware network acceleration (LANA, ECCV 2022) for pretrained timm CNNs.

The package is imported lazily so that torch-free commands (``lana solve``, ``lana pareto``,
``lana info``) start in a fraction of a second: names below are resolved on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "load_dataset": "lana.data",
    "load_teacher": "lana.teacher",
    "train_teacher": "lana.teacher",
    "find_layers": "lana.layers",
    "Layer": "lana.layers",
    "build": "lana.pipeline",
    "BuildConfig": "lana.pipeline",
    # not `accelerate`: that name is the module lana.accelerate (``from lana.accelerate import accelerate``)
    "AccelerateConfig": "lana.accelerate",
    "Library": "lana.library",
    "Plan": "lana.plan",
    "SolveOptions": "lana.plan",
    "load_problem": "lana.problem",
    "solve_library": "lana.plan",
    "assemble": "lana.student",
    "load_student": "lana.student",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lana' has no attribute {name!r}")
