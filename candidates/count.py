"""Parameter and MAC counts: measured on a module with hooks, or computed from a candidate's plan.

MACs are multiply-accumulates of one sample, counted on Conv2d and Linear only (the convention of
the LANA paper and of most FLOP counters): BN, activations, pooling and the SE multiply are a few
percent at most and are left out. A grouped conv of ``C_in`` inputs and ``g`` groups costs
``C_out * (C_in / g) * k_h * k_w`` MACs per output pixel, so a depthwise conv costs ``C * k * k``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .builder import ConvOp, SEOp, build_candidate, plan_candidate
from .fuse import inference_form
from .quant import float_parent, is_int8
from .spec import decode_spec

if TYPE_CHECKING:
    from lana.layers import Layer

__all__ = ["Candidate", "count_params_macs", "estimate_cost", "module_macs"]


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A candidate operation at one layer and what it costs there.

    Attributes:
        spec: The spec string (``lana.candidates.spec``).
        params: Number of parameters.
        macs: Multiply-accumulates of one sample at the layer's input size.
    """

    spec: str
    params: int
    macs: int


def module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one sample for a Conv2d or Linear that produced ``output`` (0 for other modules).

    Meant to be called from a forward hook; ``output``'s first dimension is the batch.
    """
    if output.dim() == 0:
        return 0
    per_sample = output.numel() // max(1, output.shape[0])
    if isinstance(module, nn.Conv2d):
        kernel = math.prod(module.kernel_size)
        return per_sample * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        # covers channels-last MLPs too (ConvNeXt): every output element is one dot product
        return per_sample * module.in_features
    return 0


@torch.no_grad()
def count_params_macs(module: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, int]:
    """Count a module's parameters and its MACs on one sample of shape ``in_shape``.

    The module runs once in eval mode on zeros (every submodule's training mode is restored
    afterwards, and BN statistics are untouched because eval mode does not update them).

    Args:
        module: Any module taking one tensor.
        in_shape: The input shape without the batch, e.g. ``(64, 56, 56)``.

    Returns:
        ``(params, macs)``.
    """
    params = sum(p.numel() for p in module.parameters())
    total = [0]

    def hook(mod, _inputs, output):
        total[0] += module_macs(mod, output)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        module(torch.zeros(1, *in_shape, device=device, dtype=dtype))
    finally:
        for m, mode in modes.items():
            m.training = mode
        for handle in handles:
            handle.remove()
    return params, total[0]


def _conv_cost(op: ConvOp, height: int, width: int, inference: bool = False) -> tuple[int, int, int, int]:
    """``(params, macs, out_h, out_w)`` of one conv -> BN -> act unit (BN folded into a bias
    when ``inference``)."""
    out_h, out_w = math.ceil(height / op.stride), math.ceil(width / op.stride)
    weights = op.out_chs * (op.in_chs // op.groups) * op.kernel_size**2
    per_channel = 1 if inference else 2
    return weights + per_channel * op.out_chs, weights * out_h * out_w, out_h, out_w


def _unit_cost(op, height: int, width: int, inference: bool) -> tuple[int, int, int, int]:
    if isinstance(op, ConvOp):
        return _conv_cost(op, height, width, inference)
    if isinstance(op, SEOp):  # two biased 1x1 convs on a 1x1 map; no BN, nothing to fold
        return 2 * op.chs * op.rd_chs + op.chs + op.rd_chs, 2 * op.chs * op.rd_chs, height, width
    return op.cost(height, width, inference)  # GhostOp, RepOp


def estimate_cost(
    spec: str, layer: Layer, inference: bool = False, teacher_block: nn.Module | None = None
) -> Candidate:
    """Parameters and MACs of candidate ``spec`` at ``layer``, computed from its plan.

    Exact (tests compare it with ``count_params_macs`` on built modules) and about a thousand
    times faster than building, which is what lets ``space_for`` filter 300 specs per layer
    instantly. ``teacher`` costs what the layer reports (``layer.params``, ``layer.macs``),
    ``id`` costs nothing, and an int8 spec costs what its float parent does (the same weights
    and multiply-accumulates, in int8).

    Args:
        spec: A candidate spec.
        layer: The layer (``in_shape``, ``out_shape``, ``stride``; ``params`` and ``macs`` for
            ``teacher``).
        inference: Count what ships, the candidate's ``lana.candidates.inference_form`` (BN
            folded into conv biases, rep branches fused into one conv: fewer MACs for ``rep*``,
            fewer parameters for all) instead of the module that is trained. ``teacher`` still
            costs what the layer reports.
        teacher_block: The layer's original module; required for ``slim_*`` specs, which are
            cut from it and counted on the built module (they have no plan).

    Returns:
        The ``Candidate`` (named ``spec``, int8 or not).

    Raises:
        ValueError: For an invalid spec, or a ``slim_*`` spec without ``teacher_block``.
    """
    if is_int8(spec):
        parent = estimate_cost(float_parent(spec), layer, inference, teacher_block)
        return dataclasses.replace(parent, spec=spec)
    kind, _ = decode_spec(spec)
    if kind == "teacher":
        return Candidate(spec, int(layer.params), int(layer.macs))
    if kind == "slim":
        if teacher_block is None:
            raise ValueError(f"{spec!r} is cut from the layer's block, so it is counted on it: pass teacher_block=")
        module = build_candidate(spec, layer, teacher_block)
        if inference:
            module = inference_form(module)
        return Candidate(spec, *count_params_macs(module, tuple(layer.in_shape)))
    if kind == "id":
        return Candidate(spec, 0, 0)
    plan = plan_candidate(spec, layer)
    _, height, width = layer.in_shape
    params = macs = 0
    for op in plan.body:
        op_params, op_macs, height, width = _unit_cost(op, height, width, inference)
        params, macs = params + op_params, macs + op_macs
    _, height, width = layer.in_shape
    for op in plan.shortcut:
        op_params, op_macs, height, width = _unit_cost(op, height, width, inference)
        params, macs = params + op_params, macs + op_macs
    return Candidate(spec, params, macs)
