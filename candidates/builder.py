"""Build a candidate operation for a layer from its spec string.

Building goes in two steps, like timm's ``_decode_block_str`` followed by ``EfficientNetBuilder``:
``plan_candidate`` turns a spec and a layer's shapes into a ``BlockPlan`` (plain numbers: which
convs, how many channels, which shortcut), and ``build_candidate`` turns a plan into modules.
The cost model (``lana.candidates.count.estimate_cost``) reads the same plan, so the parameter
and MAC counts the ILP sees cannot drift from the modules that get trained.

A layer is anything with ``in_shape`` and ``out_shape`` (``(C, H, W)``, no batch) and an integer
``stride``, such as ``lana.layers.Layer``; this package never imports ``lana.layers`` so that the
two can import each other's names without a cycle.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import OrderedDict
from typing import TYPE_CHECKING

from torch import nn

from .blocks import CandidateBlock, ConvBnAct, Crop, SqueezeExcite, init_weights, make_divisible
from .ghost import GHOST_EXPANSION, GhostOp
from .quant import float_parent, is_int8
from .rep import RepConvBnAct, RepOp
from .slim import build_slim
from .spec import decode_spec

if TYPE_CHECKING:
    from lana.layers import Layer

__all__ = ["BlockPlan", "ConvOp", "GhostOp", "RepOp", "SEOp", "build_candidate", "plan_candidate"]

# Squeeze-excite follows the block's spatial (kxk) conv and reduces to a quarter of the block's
# input channels, as EfficientNet's se_ratio=0.25 does for MBConv, so SE stays cheap however
# large the expansion; in ResNet-style blocks, whose inner width can be below the input's, a
# quarter of the inner width if that is smaller (SE-ResNet reduces even more, by 16).
_SE_RATIO = 0.25


@dataclasses.dataclass(frozen=True)
class ConvOp:
    """One conv -> BN -> act unit of a candidate's body (``act=None``: linear)."""

    name: str
    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    act: str | None = None


@dataclasses.dataclass(frozen=True)
class SEOp:
    """A squeeze-excite unit on ``chs`` channels reduced to ``rd_chs``."""

    name: str
    chs: int
    rd_chs: int
    act: str


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """What ``build_candidate`` will build for one spec at one layer.

    Attributes:
        spec: The spec, as given.
        body: The body's units in order: ``ConvOp`` and ``SEOp`` here, ``GhostOp``
            (``lana.candidates.ghost``) and ``RepOp`` (``lana.candidates.rep``), which bring
            their own ``build()`` and ``cost()``.
        in_chs, out_chs, stride: The layer's channels and stride.
        residual: Whether the shortcut is added to the body's output.
        projection: Whether the shortcut is a projection rather than the identity; only when
            the layer changes shape.
        crop_to: ``(H, W)`` to crop to when the layer's output is smaller than
            ``ceil(input / stride)``, else None.
        shortcut: The projection's conv -> BN units (empty without a projection): one 1x1 conv
            with the layer's stride, or for ``ghost`` timm's depthwise kxk (stride) + 1x1 pair.
    """

    spec: str
    body: tuple[ConvOp | SEOp | GhostOp | RepOp, ...]
    in_chs: int
    out_chs: int
    stride: int
    residual: bool
    projection: bool
    crop_to: tuple[int, int] | None
    shortcut: tuple[ConvOp, ...] = ()


def _se(chs: int, in_chs: int, act: str) -> SEOp:
    return SEOp("se", chs, max(1, round(min(chs, in_chs) * _SE_RATIO)), act)


def _ir_body(in_chs, out_chs, stride, kernel_size, expansion, se, act, lin=False):
    # MobileNetV2 / EfficientNet MBConv: 1x1 expand -> kxk depthwise (stride) -> [SE] -> 1x1 linear.
    # The expansion conv is kept at e=1 too, as timm's InvertedResidual does, so that ir_k3_e1
    # differs from dw_k3.
    # ``lin`` drops the depthwise conv's activation and keeps the expansion's: the ReLU right
    # after expanding is MobileNetV2's "expand, rectify in the wide space, project"; without the
    # second one, depthwise -> [SE] -> project is one linear depthwise-separable map.
    mid = make_divisible(in_chs * expansion)
    body = [
        ConvOp("conv_pw", in_chs, mid, 1, act=act),
        ConvOp("conv_dw", mid, mid, kernel_size, stride, groups=mid, act=None if lin else act),
    ]
    if se:
        body.append(_se(mid, in_chs, act))
    return body + [ConvOp("conv_pwl", mid, out_chs, 1)]


def _fir_body(in_chs, out_chs, stride, kernel_size, expansion, se, act, lin=False):
    # EfficientNetV2 FusedMBConv: the expand and depthwise convs fused into one full kxk conv.
    # ``lin`` drops the expansion conv's activation, its only inner one: what remains non-linear
    # is the SE gate, if any; without SE the block is linear (an over-parameterised kxk conv,
    # as in ExpandNets) and only the network around it is not.
    mid = make_divisible(in_chs * expansion)
    body = [ConvOp("conv_exp", in_chs, mid, kernel_size, stride, act=None if lin else act)]
    if se:
        body.append(_se(mid, in_chs, act))
    return body + [ConvOp("conv_pwl", mid, out_chs, 1)]


def _dw_body(in_chs, out_chs, stride, kernel_size, se, act):
    # MobileNetV1 depthwise-separable conv; the pointwise conv is linear, as in timm's
    # DepthwiseSeparableConv, because its output feeds a residual add or the next block's conv.
    body = [ConvOp("conv_dw", in_chs, in_chs, kernel_size, stride, groups=in_chs, act=act)]
    if se:
        body.append(_se(in_chs, in_chs, act))
    return body + [ConvOp("conv_pw", in_chs, out_chs, 1)]


def _conv_body(in_chs, out_chs, stride, kernel_size, se, act):
    body = [ConvOp("conv", in_chs, out_chs, kernel_size, stride, act=act)]
    return body + ([_se(out_chs, in_chs, act)] if se else [])


def _basic_body(in_chs, out_chs, stride, width, se, act):
    inner = make_divisible(out_chs * width)
    body = [ConvOp("conv1", in_chs, inner, 3, stride, act=act)]
    if se:
        body.append(_se(inner, in_chs, act))
    return body + [ConvOp("conv2", inner, out_chs, 3)]


def _bottleneck_body(in_chs, out_chs, stride, width, se, act):
    # inner = out * w: w=0.25 is ResNet-50's own bottleneck (256 out, 64 inner)
    inner = make_divisible(out_chs * width)
    body = [
        ConvOp("conv1", in_chs, inner, 1, act=act),
        ConvOp("conv2", inner, inner, 3, stride, act=act),
    ]
    if se:
        body.append(_se(inner, in_chs, act))
    return body + [ConvOp("conv3", inner, out_chs, 1)]


def _ghost_body(in_chs, out_chs, stride, kernel_size, ratio, se):
    # timm's GhostBottleneck (see lana.candidates.ghost for the two fixed choices): ghost expand
    # (ReLU) -> [depthwise stride conv, linear] -> [SE] -> ghost project (linear)
    mid = make_divisible(in_chs * GHOST_EXPANSION, 8 * ratio)  # primary: a multiple of 8
    body = [GhostOp("ghost1", in_chs, mid, ratio, kernel_size, act="relu")]
    if stride > 1:
        body.append(ConvOp("conv_dw", mid, mid, kernel_size, stride, groups=mid))
    if se:
        body.append(_se(mid, in_chs, "relu"))
    return body + [GhostOp("ghost2", mid, out_chs, ratio, kernel_size)]


def _rep_body(in_chs, out_chs, stride, kernel_size, act):
    # one RepVGG unit; its identity branch is the residual (see lana.candidates.rep)
    return [RepOp("rep", in_chs, out_chs, kernel_size, stride, act=act)]


def _repdw_body(in_chs, out_chs, stride, kernel_size, act):
    # MobileOne: depthwise rep unit (stride) -> pointwise rep unit, each followed by the act
    return [
        RepOp("conv_dw", in_chs, in_chs, kernel_size, stride, groups=in_chs, act=act),
        RepOp("conv_pw", in_chs, out_chs, 1, act=act),
    ]


_BODIES = {
    "ir": _ir_body,
    "fir": _fir_body,
    "dw": _dw_body,
    "conv": _conv_body,
    "basic": _basic_body,
    "bottleneck": _bottleneck_body,
    "ghost": _ghost_body,
    "rep": _rep_body,
    "repdw": _repdw_body,
}
# ResNet families and GhostNet always add a shortcut (projected when the shape changes);
# MBConv-like ones add it only when the shape is kept, as MobileNetV2 and EfficientNet do; a
# plain conv never does, nor do rep blocks, whose identity branch is the residual and folds into
# their conv.
_ALWAYS_RESIDUAL = ("basic", "bottleneck", "ghost")
_NEVER_RESIDUAL = ("conv", "rep", "repdw")


def _shortcut_ops(kind: str, args: dict, in_chs: int, out_chs: int, stride: int) -> list[ConvOp]:
    """The projection's units: timm's GhostBottleneck projects with a depthwise kxk conv (the
    stride) then a 1x1 conv; every other family with one strided 1x1 conv."""
    if kind == "ghost":
        kernel_size = args["kernel_size"]
        return [
            ConvOp("conv_dw", in_chs, in_chs, kernel_size, stride, groups=in_chs),
            ConvOp("conv_pw", in_chs, out_chs, 1),
        ]
    return [ConvOp("shortcut", in_chs, out_chs, 1, stride)]


def _check_id_fits(layer: Layer) -> None:
    if tuple(layer.in_shape) != tuple(layer.out_shape):
        raise ValueError(
            f"'id' cannot replace layer {getattr(layer, 'name', '?')}: "
            f"its input {tuple(layer.in_shape)} and output {tuple(layer.out_shape)} differ, "
            "and the identity keeps the shape"
        )


def plan_candidate(spec: str, layer: Layer) -> BlockPlan:
    """Decide, without building anything, the structure of candidate ``spec`` at ``layer``.

    Args:
        spec: A spec of any kind except ``teacher`` and ``id`` (which have no plan).
        layer: The layer to fit: ``in_shape``, ``out_shape`` and ``stride`` are read.

    Returns:
        The ``BlockPlan``.

    Raises:
        ValueError: For an invalid spec, or for ``teacher`` / ``id``.
    """
    kind, args = decode_spec(spec)
    if kind not in _BODIES:
        raise ValueError(f"{spec!r} is not built from a plan; only {', '.join(_BODIES)} are")
    in_chs, in_h, in_w = (int(v) for v in layer.in_shape)
    out_chs, out_h, out_w = (int(v) for v in layer.out_shape)
    stride = max(1, int(layer.stride))
    body = _BODIES[kind](in_chs, out_chs, stride, **args)
    same_shape = (in_chs, in_h, in_w) == (out_chs, out_h, out_w)
    residual = kind in _ALWAYS_RESIDUAL or (kind not in _NEVER_RESIDUAL and same_shape)
    # Every conv pads k // 2, so a stride-s block yields ceil(H / s) rows. A layer that
    # downsamples by a non-integer factor (find_layers then picks the stride that overshoots
    # least) gets a crop to its exact output size.
    produced = (math.ceil(in_h / stride), math.ceil(in_w / stride))
    if produced[0] < out_h or produced[1] < out_w:
        raise ValueError(
            f"cannot build {spec!r} for layer {getattr(layer, 'name', '?')}: stride {stride} "
            f"turns {in_h}x{in_w} into {produced[0]}x{produced[1]}, smaller than its output "
            f"{out_h}x{out_w}"
        )
    crop_to = None if produced == (out_h, out_w) else (out_h, out_w)
    projection = residual and not same_shape
    return BlockPlan(
        spec=spec,
        body=tuple(body),
        in_chs=in_chs,
        out_chs=out_chs,
        stride=stride,
        residual=residual,
        projection=projection,
        crop_to=crop_to,
        shortcut=tuple(_shortcut_ops(kind, args, in_chs, out_chs, stride)) if projection else (),
    )


def _module(op: ConvOp | SEOp | GhostOp | RepOp) -> nn.Module:
    if isinstance(op, SEOp):
        return SqueezeExcite(op.chs, op.rd_chs, op.act)
    if isinstance(op, ConvOp):
        return ConvBnAct(op.in_chs, op.out_chs, op.kernel_size, op.stride, op.groups, op.act)
    return op.build()


def build_candidate(spec: str, layer: Layer, teacher_block: nn.Module | None = None) -> nn.Module:
    """Build candidate ``spec`` for ``layer``: a module ``(B, *in_shape) -> (B, *out_shape)``.

    Fresh candidates are initialised by ``blocks.init_weights`` (residual ones start as the
    identity plus a projection where the shape changes; rep units with an identity branch start
    as their activation of the input, ``RepConvBnAct.start_near_identity``); the result depends
    only on the spec, the layer's shapes and the torch RNG state. Rep candidates are built with
    their branches, for distillation; ``lana.candidates.inference_form`` fuses them.

    Args:
        spec: A candidate spec (see ``lana.candidates.spec``). An int8 spec (``ir_k3_e3_int8``)
            builds its float parent: ``quantize_int8`` turns it int8 once distilled and given
            calibration data (``lana.context.LibraryContext.load`` does both).
        layer: The layer it replaces (``in_shape``, ``out_shape``, ``stride``).
        teacher_block: The layer's original module; required for ``teacher``, which returns a
            deep copy of it (weights included), and for ``slim_*``, cut from a copy of it
            (``lana.candidates.slim``); ignored otherwise.

    Returns:
        The candidate module: a fresh one is in training mode, a ``teacher`` or ``slim_*`` copy
        keeps the mode of ``teacher_block``.

    Raises:
        ValueError: For an invalid spec, ``teacher`` or ``slim_*`` without ``teacher_block``, a
            slim spec the block does not take, or ``id`` where the layer changes shape.
    """
    if is_int8(spec):
        return build_candidate(float_parent(spec), layer, teacher_block)
    kind, _ = decode_spec(spec)
    if kind == "teacher":
        if teacher_block is None:
            raise ValueError("spec 'teacher' copies the layer's block: pass teacher_block=")
        return copy.deepcopy(teacher_block)
    if kind == "slim":
        if teacher_block is None:
            raise ValueError(f"spec {spec!r} is cut from the layer's block: pass teacher_block=")
        return build_slim(spec, teacher_block)
    if kind == "id":
        _check_id_fits(layer)
        return nn.Identity()
    plan = plan_candidate(spec, layer)
    body = nn.Sequential(OrderedDict((op.name, _module(op)) for op in plan.body))
    if len(plan.shortcut) == 1:  # a bare ConvBnAct: the state-dict keys of the first families
        shortcut = _module(plan.shortcut[0])
    elif plan.shortcut:
        shortcut = nn.Sequential(OrderedDict((op.name, _module(op)) for op in plan.shortcut))
    else:
        shortcut = nn.Identity()
    crop = Crop(*plan.crop_to) if plan.crop_to else nn.Identity()
    block = CandidateBlock(body, shortcut, plan.residual, crop)
    init_weights(block)
    for module in block.modules():
        if isinstance(module, RepConvBnAct):
            module.start_near_identity()
    return block
