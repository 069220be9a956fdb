"""Stage 5 of LANA: the student, assembled from the library's already-trained candidates.

A student is the teacher with the plan's candidates, carrying their distilled weights, in place
of its layers. It is saved as ``student.safetensors`` + ``plan.json`` + ``student.json`` and
rebuilt from the teacher's timm name, the specs and the weights: never from a pickled module.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch.nn as nn

from lana.plan import Plan

__all__ = ["assemble", "save_student", "load_student", "student_from_context", "model_stats"]

log = logging.getLogger(__name__)


def _check_plan(plan: Plan, layer_names: list[str], specs: list[list[str]]) -> None:
    unknown = [layer for layer, _ in plan.choices if layer not in layer_names]
    if unknown:
        raise ValueError(f"plan names layers the library does not have: {', '.join(unknown)}; layers are {', '.join(layer_names)}")
    index = {name: i for i, name in enumerate(layer_names)}
    bad = [f"{layer}: {spec}" for layer, spec in plan.choices if spec not in specs[index[layer]]]
    if bad:
        raise ValueError(f"plan chooses candidates the library does not hold: {'; '.join(bad)}")


def student_from_context(ctx, plan: Plan) -> nn.Module:
    """Build the student from a :class:`lana.pipeline.LibraryContext` (weights in memory)."""
    from lana.layers import replace_layer

    names = [layer.name for layer in ctx.layers]
    _check_plan(plan, names, ctx.specs)
    student = copy.deepcopy(ctx.teacher).eval()
    for layer, spec in plan.choices:
        if spec != "teacher":
            replace_layer(student, layer, ctx.load(names.index(layer), spec))
    return student.eval()


def assemble(library: str | os.PathLike, plan: Plan | str | os.PathLike, ctx=None) -> nn.Module:
    """The student of ``plan`` (a Plan or a plan.json path), with its distilled weights.

    Args:
        ctx: a :func:`lana.pipeline.context_from_library` of ``library``, to reuse loaded weights.
    """
    from lana.pipeline import context_from_library

    plan = plan if isinstance(plan, Plan) else Plan.load(plan)
    ctx = ctx or context_from_library(library)
    return student_from_context(ctx, plan)


def model_stats(model: nn.Module, input_shape) -> dict:
    """Parameters and MACs of a whole model for one sample."""
    from lana.candidates import count_params_macs

    params, macs = count_params_macs(model, tuple(input_shape))
    return {"params": int(params), "macs": int(macs)}


def save_student(student: nn.Module, plan: Plan, ctx, out: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``student.safetensors``, ``plan.json`` and ``student.json`` into ``out``."""
    from lana.teacher import save_state, write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_state(student, out / "student.safetensors")
    plan.save(out / "plan.json")
    teacher_cfg = {"model": plan.model, "num_classes": _num_classes(ctx.teacher), "img_size": ctx.input_shape[-1]}
    layers = {layer.name: asdict(layer) for layer in ctx.layers if layer.name in plan.specs}
    write_json(out / "student.json", {"teacher": teacher_cfg, "choices": plan.specs, "layers": layers, **(extra or {})})
    return out


def _num_classes(model: nn.Module) -> int:
    return int(model.num_classes) if hasattr(model, "num_classes") else int(model.get_classifier().out_features)


def load_student(directory: str | os.PathLike) -> nn.Module:
    """Rebuild a saved student from its timm name, specs and weights (eval mode)."""
    from lana.candidates import build_candidate
    from lana.layers import Layer, replace_layer
    from lana.teacher import create_model, load_state_file

    directory = Path(directory)
    config_path = directory / "student.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no student.json: not a saved student (lana assemble writes one)")
    config = json.loads(config_path.read_text())
    teacher = config["teacher"]
    model = create_model(teacher["model"], teacher["num_classes"])
    for name, spec in config["choices"].items():
        if spec == "teacher":
            continue
        a = config["layers"][name]
        layer = Layer(a["name"], a["kind"], tuple(a["in_shape"]), tuple(a["out_shape"]), a["stride"], a["params"], a["macs"])
        replace_layer(model, name, build_candidate(spec, layer))
    state = load_state_file(directory / "student.safetensors")
    model.load_state_dict(state, strict=True)
    return model.eval()
