"""Stage 5 of LANA: the student, assembled from the library's already-trained candidates.

A student is the teacher with the plan's candidates, carrying their distilled weights, in place
of its layers. It is saved as ``student.safetensors`` + ``plan.json`` + ``student.json`` and
rebuilt from the teacher's timm name, the specs and the weights: never from a pickled module.

Int8 choices (``S_int8``). ``student_from_context`` gives the student as scored: each int8
layer is its distilled parent quantized on the teacher's inputs. Int8 kernels cannot be trained,
so fine-tuning takes the float student (``float_only=True``) and ``quantize_layers`` quantizes
its int8 layers afterwards, calibrated on the student's own inputs at those layers. What is saved
is the float student plus the calibration images' origin (``student.json``): ``load_student``
rebuilds it and quantizes the same layers on the same images, which gives back the same model.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from lana.plan import Plan

__all__ = [
    "assemble",
    "save_student",
    "load_student",
    "student_from_context",
    "quantize_layers",
    "int8_layers",
    "model_stats",
]

log = logging.getLogger(__name__)


def _check_plan(plan: Plan, layer_names: list[str], specs: list[list[str]]) -> None:
    """The checks of :func:`lana.plan.plan_errors`, a partial plan allowed (unnamed layers keep
    the teacher's block)."""
    from lana.plan import plan_errors

    errors = plan_errors(plan, layer_names, specs, complete=False)
    if errors:
        raise ValueError("the plan does not fit the library: " + "; ".join(errors))


def int8_layers(plan: Plan) -> list[str]:
    """The layers ``plan`` runs in int8, in network order."""
    from lana.candidates import is_int8

    return [layer for layer, spec in plan.choices if is_int8(spec)]


def student_from_context(ctx, plan: Plan, float_only: bool = False) -> nn.Module:
    """Build the student from a :class:`lana.context.LibraryContext` (weights in memory).

    Args:
        float_only: Give each int8 choice as its float parent (to fine-tune, then
            ``quantize_layers``); by default int8 choices are the library's quantized modules,
            the student the scores and latency tables describe.
    """
    from lana.candidates import float_parent
    from lana.layers import replace_layer

    names = [layer.name for layer in ctx.layers]
    _check_plan(plan, names, ctx.specs)
    student = copy.deepcopy(ctx.teacher).eval()
    for layer, spec in plan.choices:
        spec = float_parent(spec) if float_only else spec
        if spec != "teacher":
            replace_layer(student, layer, ctx.load(names.index(layer), spec))
    return student.eval()


def quantize_layers(student: nn.Module, plan: Plan, images: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """Quantize the int8 choices of ``plan`` in a float student, in place, calibrated on
    ``images``.

    The student runs once over ``images`` (float, eval, CPU) with every int8 layer's input
    recorded; each such layer is then replaced by ``lana.candidates.quantize_int8`` of it on
    those inputs. All layers see float inputs from a float prefix, so the result depends only
    on the float weights and the images, which is what lets ``load_student`` rebuild it.

    Args:
        student: A float student on the CPU (``student_from_context(..., float_only=True)``,
            fine-tuned or not).
        plan: The plan it was assembled from.
        images: uint8 calibration images (``lana.calibration.CalibrationSet.images``).
        batch_size: Images per forward.

    Returns:
        ``student``, in eval mode, with int8 layers; unchanged when ``plan`` has none.
    """
    from lana.calibration import capture_inputs
    from lana.candidates import quantize_int8
    from lana.layers import get_layer, replace_layer

    names = int8_layers(plan)
    if not names:
        return student.eval()
    inputs = capture_inputs(student, names, images, batch_size)
    for name in names:
        replace_layer(student, name, quantize_int8(get_layer(student, name), inputs[name][0], inputs[name]))
    return student.eval()


def assemble(library: str | os.PathLike, plan: Plan | str | os.PathLike, ctx=None) -> nn.Module:
    """The student of ``plan`` (a Plan or a plan.json path), with its distilled weights.

    Args:
        ctx: a :func:`lana.context.context_from_library` of ``library``, to reuse loaded weights.

    Raises:
        ValueError: the plan does not fit the library (:func:`lana.plan.verify_plan`).
    """
    from lana.context import context_from_library
    from lana.plan import verify_plan

    plan = verify_plan(plan if isinstance(plan, Plan) else Plan.load(plan), library)
    ctx = ctx or context_from_library(library)
    return student_from_context(ctx, plan)


def model_stats(model: nn.Module, input_shape) -> dict:
    """Parameters and MACs of a whole model for one sample."""
    from lana.candidates import count_params_macs

    params, macs = count_params_macs(model, tuple(input_shape))
    return {"params": int(params), "macs": int(macs)}


def save_student(
    student: nn.Module, plan: Plan, ctx, out: str | os.PathLike, extra: dict | None = None, calibration=None
) -> Path:
    """Write ``student.safetensors``, ``plan.json`` and ``student.json`` into ``out``.

    Args:
        student: The float student: for a plan with int8 choices, the one before
            ``quantize_layers`` (int8 weights are packed for the CPU kernels, not tensors to save).
        calibration: For int8 choices, the ``lana.calibration.CalibrationSet`` their layers were
            quantized on (default: the context's); ``load_student`` quantizes them again on it.

    Raises:
        ValueError: If ``student`` holds int8 modules.
    """
    from lana.candidates import is_quantized
    from lana.files import write_json
    from lana.teacher import save_state

    if any(is_quantized(module) for module in student.modules()):
        raise ValueError(
            "save_student takes the float student (before quantize_layers): int8 modules hold packed "
            "weights; student.json records how to quantize its int8 layers again"
        )
    quantized = int8_layers(plan)
    calibration = calibration or getattr(ctx, "calibration", None)
    if quantized and calibration is None:
        raise ValueError(f"plan runs {', '.join(quantized)} in int8: pass the calibration set they were quantized on")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_state(student, out / "student.safetensors")
    plan.save(out / "plan.json")
    teacher_cfg = {"model": plan.model, "num_classes": _num_classes(ctx.teacher), "img_size": ctx.input_shape[-1]}
    layers = {layer.name: asdict(layer) for layer in ctx.layers if layer.name in plan.specs}
    int8 = {"int8_layers": quantized, "calibration": asdict(calibration)} if quantized else {}
    write_json(
        out / "student.json", {"teacher": teacher_cfg, "choices": plan.specs, "layers": layers, **int8, **(extra or {})}
    )
    return out


def _num_classes(model: nn.Module) -> int:
    return int(model.num_classes) if hasattr(model, "num_classes") else int(model.get_classifier().out_features)


def load_student(directory: str | os.PathLike) -> nn.Module:
    """Rebuild a saved student from its timm name, specs and weights (eval mode).

    Int8 layers (``student.json``'s ``int8_layers``) are quantized again on the calibration
    images it names, which are loaded from their data set.
    """
    from lana.candidates import build_candidate, float_parent
    from lana.layers import Layer, get_layer, replace_layer
    from lana.teacher import create_model, load_state_file

    directory = Path(directory)
    config_path = directory / "student.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no student.json: not a saved student (lana assemble writes one)")
    config = json.loads(config_path.read_text())
    teacher = config["teacher"]
    model = create_model(teacher["model"], teacher["num_classes"])
    for name, spec in config["choices"].items():
        if float_parent(spec) == "teacher":  # the model's own block (int8 ones are quantized below)
            continue
        a = config["layers"][name]
        layer = Layer(
            a["name"], a["kind"], tuple(a["in_shape"]), tuple(a["out_shape"]), a["stride"], a["params"], a["macs"]
        )
        # slim_* are cut from the teacher's block: their shapes follow from its architecture alone
        # (lana.candidates.slim), so the untrained model's block gives them; the weights follow
        replace_layer(model, name, build_candidate(spec, layer, teacher_block=get_layer(model, name)))
    state = load_state_file(directory / "student.safetensors")
    model.load_state_dict(state, strict=True)
    if config.get("int8_layers"):
        from lana.calibration import CalibrationSet

        images = CalibrationSet.of(config["calibration"]).images()
        quantize_layers(model, Plan.load(directory / "plan.json"), images)
    return model.eval()
