"""Teacher-derived candidates: the teacher's own block with fewer hidden channels (``slim_*``).

``slim_w0.5`` is a copy of the layer's teacher block whose hidden channels (those that neither
enter nor leave the block) are cut to half, keeping the most important ones with their teacher
weights; input and output channels, stride, shortcut and state-dict keys are unchanged, so it
starts where Torch-Pruning starts. ``slim_k3`` crops the block's k5/k7 depthwise kernel to its
centre 3x3 (once-for-all's elastic kernel) and cuts nothing; ``slim_w0.5_k3`` does both.

=====================================  ===========================================  =========
timm block (module)                    hidden channels cut                          slim_k3
=====================================  ===========================================  =========
BasicBlock (resnet)                    conv1's outputs                              --
Bottleneck (resnet; ResNeXt grouped)   conv1's and conv2's outputs (grouped: whole  --
                                       groups of conv2, both at once)
Bottleneck (regnet, X and Y)           conv1/conv2 (grouped: whole groups), SE      --
InvertedResidual (_efficientnet_*)     the expansion (conv_pw -> conv_dw -> SE)     k5, k7 dw
EdgeResidual (_efficientnet_*)         conv_exp's outputs (and SE)                  --
DepthwiseSeparableConv                 exempt from widths: its hidden width is its  k5, k7 dw
                                       input
ConvNeXtBlock (convnext)               mlp.fc1's outputs (4 x dim)                  k7 dw
GhostBottleneck (ghostnet, original)   ghost1's primary channels with their cheap   k5 conv_dw
                                       twins (mid = 2 x primary), SE                (stride 2)
=====================================  ===========================================  =========

Exempt (no ``slim_*``): a single conv (``ConvBnAct``, timm's ``ConvNormAct``, ``RepVggBlock``,
``MobileOneBlock``: no hidden channels), and, not covered yet (``TODO(limit)``), blocks whose
hidden channels run through parts this module does not slice: byobnet's ``BasicBlock`` /
``BottleneckBlock``, ReXNet's ``LinearBottleneck`` (partial residual), MobileNetV4's
``UniversalInvertedResidual``, ConvNeXt-V2 (GRN), GhostNet-V2 (attention branch), Res2Net, ResNeSt,
SK, CSP, DPN, VoVNet, EfficientViT blocks, and any of the covered classes built with
anti-aliasing, space-to-depth or grouped pointwise convs. ``slim_specs`` gives them none and
``build_slim`` says why.

Importance. A hidden channel ``c`` scores ``|gamma_c| * ||W[:, c]||_2``: the scale of the last BN
it passes times the norm of the weights that consume it (``W``: the next conv or linear), the
product once-for-all and the probe of issue 14 sort by; ConvNeXt has LayerNorm before the MLP, not
on the hidden channels, so there the score is ``||fc2.weight[:, c]||`` alone. Whole groups of a
grouped conv and a ghost primary with its cheap twin score the sum of their channels. Channels are
kept in descending score order (stable: ties keep the teacher's order), so the kept set of a width
contains that of every narrower one and ``slim_w1`` is the teacher with its channels permuted.

Hand surgery, not Torch-Pruning's DepGraph: DepGraph finds the same channel groups on these
blocks, but it only removes channels (keeps the teacher's order, so no importance ordering), it
leaves a grouped conv's ``groups`` unchanged when whole groups go (RegNet's ``conv2`` then fails
in forward; checked with torch-pruning 1.6), and as a product dependency it would tie every reload
to its version. Here each block's channel groups are listed by hand (``_RECIPES``) and every tensor
is sliced with ``index_select``.

Reloading. The shapes of a slim candidate depend only on the teacher block's architecture and the
spec (``slim_channels``), never on its weights, so rebuilding from the teacher block and loading a
saved state dict reproduces the saved module exactly whatever order the importance picks.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .blocks import make_divisible
from .spec import decode_spec, encode_spec

if TYPE_CHECKING:
    from lana.layers import Layer

__all__ = ["SLIM_WIDTHS", "build_slim", "cut_block", "slim_channels", "slim_specs"]

SLIM_WIDTHS = (0.875, 0.75, 0.5, 0.375, 0.25)


@dataclasses.dataclass(frozen=True)
class _Member:
    """A module one of whose channel axes is the group's: its outputs (``"out"``: a conv, BN or
    linear that makes them) or its inputs (``"in"``); ``tiles`` copies of the group side by side
    (a ghost module concatenates primary and cheap channels)."""

    path: str
    side: str
    tiles: int = 1


@dataclasses.dataclass(frozen=True)
class _Group:
    """Hidden channels that are cut together.

    Attributes:
        name: The conv or linear that makes them: the key in ``slim_channels``.
        units: How many units there are to keep or cut: channels, whole groups of a grouped
            conv, or ghost primaries.
        unit_chs: Channels per unit (a grouped conv's group width, else 1).
        members: Every tensor-holding module with an axis of these channels.
        consumer: The conv or linear whose input weights rank them (one tile each).
        scales: BNs whose ``|gamma|`` (concatenated) multiply the consumer's norms; empty
            where the hidden channels see no BN (ConvNeXt).
        tiles: Copies of the units along the consumer's input axis (2 for a ghost module).
        count_attrs: ``(path, attribute)`` to set to the new tiled channel count.
    """

    name: str
    units: int
    unit_chs: int
    members: tuple[_Member, ...]
    consumer: str
    scales: tuple[str, ...] = ()
    tiles: int = 1
    count_attrs: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class _Recipe:
    groups: tuple[_Group, ...]
    depthwise: str | None = None  # the kxk depthwise conv that slim_k3 crops (k > 3 only)


class _NotCovered(Exception):
    """The block is of a kind (or variant) this module does not slice; the message says why."""


def _require(condition: bool, why: str) -> None:
    if not condition:
        raise _NotCovered(why)


def _plain(block: nn.Module, *paths: str) -> None:
    """Refuse variants whose extra units (anti-aliasing, space-to-depth) would see the hidden
    channels: they hold per-channel state this module does not slice."""
    for path in paths:
        module = getattr(block, path, None)
        _require(module is None or isinstance(module, nn.Identity), f"its {path} is not covered")


def _dense(*convs: nn.Module) -> None:
    _require(all(getattr(c, "groups", 1) == 1 for c in convs), "a grouped pointwise conv is not covered")


def _outs(*paths: str, tiles: int = 1) -> tuple[_Member, ...]:
    return tuple(_Member(path, "out", tiles) for path in paths)


def _se_members(block: nn.Module, path: str = "se", tiles: int = 1) -> tuple[_Member, ...]:
    """timm's SE units (efficientnet ``conv_reduce`` / ``conv_expand``, regnet ``fc1`` / ``fc2``)
    read the hidden channels and gate them; their reduced width stays the teacher's."""
    se = getattr(block, path, None)
    if se is None or isinstance(se, nn.Identity):
        return ()
    for reduce, expand in (("conv_reduce", "conv_expand"), ("fc1", "fc2")):
        if hasattr(se, reduce):
            return (_Member(f"{path}.{reduce}", "in", tiles), _Member(f"{path}.{expand}", "out", tiles))
    raise _NotCovered(f"its SE unit {type(se).__name__} is not covered")


def _chain(block: nn.Module, conv: str, bn: str, consumer: str, extra: tuple[_Member, ...] = ()) -> _Group:
    """The common case: ``conv`` and its ``bn`` make the channels, ``consumer`` reads them."""
    members = _outs(conv, bn) + extra + (_Member(consumer, "in"),)
    return _Group(conv, block.get_submodule(conv).out_channels, 1, members, consumer, (bn,))


def _basic_block(block: nn.Module) -> _Recipe:
    _plain(block, "aa")
    return _Recipe((_chain(block, "conv1", "bn1", "conv2"),))


def _bottleneck(block: nn.Module, convs: tuple[str, ...], bns: tuple[str, ...], se: tuple) -> _Recipe:
    """ResNet's and RegNet's bottlenecks; ``se``: the members of an SE on conv2's outputs."""
    conv1, conv2, conv3 = (block.get_submodule(path) for path in convs)
    _dense(conv1, conv3)
    if conv2.groups == 1:
        return _Recipe((_chain(block, convs[0], bns[0], convs[1]), _chain(block, convs[1], bns[1], convs[2], se)))
    # grouped (ResNeXt, RegNet): conv2's groups tie conv1's outputs to conv2's, so whole groups
    # of both go at once
    _require(conv1.out_channels == conv2.in_channels == conv2.out_channels, "its grouped conv changes width")
    members = _outs(convs[0], bns[0], convs[1], bns[1]) + se + (_Member(convs[2], "in"),)
    group = _Group(convs[0], conv2.groups, conv2.out_channels // conv2.groups, members, convs[2], (bns[1],))
    return _Recipe((group,))


def _resnet_bottleneck(block: nn.Module) -> _Recipe:
    _plain(block, "aa")  # its SE, if any, reads conv3: not hidden
    return _bottleneck(block, ("conv1", "conv2", "conv3"), ("bn1", "bn2"), ())


def _regnet_bottleneck(block: nn.Module) -> _Recipe:
    _require(isinstance(getattr(block.se, "bn", nn.Identity()), nn.Identity), "an SE with BN is not covered")
    convs, bns = ("conv1.conv", "conv2.conv", "conv3.conv"), ("conv1.bn", "conv2.bn")
    return _bottleneck(block, convs, bns, _se_members(block))


def _kxk_depthwise(block: nn.Module, path: str) -> str | None:
    conv = getattr(block, path, None)
    return path if conv is not None and conv.groups == conv.in_channels and max(conv.kernel_size) > 3 else None


def _inverted_residual(block: nn.Module) -> _Recipe:
    _plain(block, "aa", "conv_s2d")
    _dense(block.conv_pw, block.conv_pwl)
    extra = _outs("conv_dw", "bn2") + _se_members(block)
    group = _chain(block, "conv_pw", "bn1", "conv_pwl", extra)
    return _Recipe((dataclasses.replace(group, scales=("bn2",)),), _kxk_depthwise(block, "conv_dw"))


def _edge_residual(block: nn.Module) -> _Recipe:
    _plain(block, "aa")
    _dense(block.conv_exp, block.conv_pwl)
    return _Recipe((_chain(block, "conv_exp", "bn1", "conv_pwl", _se_members(block)),))


def _depthwise_separable(block: nn.Module) -> _Recipe:
    # conv_dw's width is the block's input width: nothing hidden to cut, only its kernel
    return _Recipe((), _kxk_depthwise(block, "conv_dw"))


def _convnext(block: nn.Module) -> _Recipe:
    mlp = block.mlp
    _require(type(mlp).__name__ == "Mlp" and isinstance(mlp.norm, nn.Identity), "its MLP variant is not covered")
    hidden = mlp.fc1.out_features if isinstance(mlp.fc1, nn.Linear) else mlp.fc1.out_channels
    members = (_Member("mlp.fc1", "out"), _Member("mlp.fc2", "in"))
    return _Recipe((_Group("mlp.fc1", hidden, 1, members, "mlp.fc2"),), _kxk_depthwise(block, "conv_dw"))


def _ghost_bottleneck(block: nn.Module) -> _Recipe:
    ghost1 = block.ghost1
    _require(type(ghost1).__name__ == "GhostModule", "only the original ghost module is covered")
    primary, cheap = ghost1.primary_conv[0], ghost1.cheap_operation[0]
    # ratio 2 (GhostNet's): cheap channel j is primary j's depthwise twin, mid = 2 x primary,
    # and everything after ghost1 sees [primaries | twins]: two tiles of the kept units
    _require(cheap.out_channels == primary.out_channels == ghost1.out_chs // 2, "ghost ratio 2, even mid only")
    members = _outs(
        *(f"ghost1.{p}" for p in ("primary_conv.0", "primary_conv.1", "cheap_operation.0", "cheap_operation.1"))
    )
    strided = block.conv_dw is not None
    members += _outs("conv_dw", "bn_dw", tiles=2) if strided else ()
    members += _se_members(block, tiles=2) + (_Member("ghost2.primary_conv.0", "in", 2),)
    scales = ("bn_dw",) if strided else ("ghost1.primary_conv.1", "ghost1.cheap_operation.1")
    name, consumer, count = "ghost1.primary_conv.0", "ghost2.primary_conv.0", (("ghost1", "out_chs"),)
    group = _Group(name, primary.out_channels, 1, members, consumer, scales, tiles=2, count_attrs=count)
    return _Recipe((group,), _kxk_depthwise(block, "conv_dw"))


@functools.cache
def _recipes() -> tuple[tuple[type, object], ...]:
    # deferred: timm is only needed once a teacher block is at hand
    from timm.models import _efficientnet_blocks as eff
    from timm.models import convnext, ghostnet, regnet, resnet

    return (
        (resnet.BasicBlock, _basic_block),
        (resnet.Bottleneck, _resnet_bottleneck),
        (regnet.Bottleneck, _regnet_bottleneck),
        (eff.InvertedResidual, _inverted_residual),
        (eff.EdgeResidual, _edge_residual),
        (eff.DepthwiseSeparableConv, _depthwise_separable),
        (convnext.ConvNeXtBlock, _convnext),
        (ghostnet.GhostBottleneck, _ghost_bottleneck),
    )


def _recipe(block: nn.Module) -> _Recipe:
    """The block's recipe; raises ``_NotCovered`` for a kind or variant without one."""
    for cls, make in _recipes():
        if type(block) is cls:  # exact: a subclass may add channels we would not slice
            return make(block)
    raise _NotCovered(f"no slim recipe for {type(block).__name__}")


# ---- widths ------------------------------------------------------------------------------------


def _kept_units(group: _Group, width: float) -> int:
    """Units kept at ``width``: ``make_divisible(width * hidden, 8)`` channels as timm rounds
    (multiples of 8 run on the fast paths of oneDNN, cuDNN and ONNX Runtime), never more than
    the teacher's. Groups of ``g`` channels round to a multiple of ``8 / gcd(g, 8)`` groups so
    that the channel count is a multiple of 8 too."""
    step = 8 // math.gcd(group.unit_chs, 8)
    return min(group.units, make_divisible(width * group.units, step))


def _parse(spec: str) -> tuple[float | None, int | None]:
    """``(width, kernel)``; None where the spec leaves it as the teacher's (``slim_k3`` cuts no
    channel, while ``slim_w1`` runs the cut and keeps every channel, reordered)."""
    kind, args = decode_spec(spec)
    if kind != "slim":
        raise ValueError(f"{spec!r} is not a slim spec")
    return args.get("width"), args.get("kernel_size")


def _recipe_or_error(spec: str, block: nn.Module) -> _Recipe:
    try:
        recipe = _recipe(block)
    except _NotCovered as why:
        raise ValueError(f"{spec!r} cannot be cut from a {type(block).__name__}: {why}") from None
    width, kernel = _parse(spec)
    if width is not None and width < 1.0 and not recipe.groups:
        raise ValueError(f"{spec!r}: a {type(block).__name__} has no hidden channels to cut (its width is its input's)")
    if kernel is not None and recipe.depthwise is None:
        raise ValueError(f"{spec!r}: a {type(block).__name__} here has no k5/k7 depthwise conv to crop to 3x3")
    return recipe


def slim_channels(spec: str, teacher_block: nn.Module) -> dict[str, int]:
    """The hidden channel counts candidate ``spec`` keeps, by the conv (or linear) that makes them.

    They follow from the block's architecture and the spec alone, not from its weights: the
    record to store beside a slim candidate's weights, and what its shapes are rebuilt from.

    Args:
        spec: A slim spec (``slim_w0.5``, ``slim_k3``, ...; ``slim_w1`` gives the teacher's counts).
        teacher_block: The teacher's block at the layer.

    Returns:
        ``{module path: kept output channels}``, e.g. ``{"conv_pw": 48}`` for an inverted residual,
        ``{"ghost1.primary_conv.0": 16}`` for a ghost bottleneck (whose mid width is twice that);
        empty for a block without hidden channels (``slim_k3`` on a depthwise-separable conv).

    Raises:
        ValueError: For a spec that is not slim, or a block it does not apply to.
    """
    recipe = _recipe_or_error(spec, teacher_block)
    width, _ = _parse(spec)
    return {group.name: _kept_units(group, width or 1.0) * group.unit_chs for group in recipe.groups}


def slim_specs(layer: Layer, teacher_block: nn.Module) -> list[str]:
    """The distinct slim specs of a block: one per width whose rounded counts differ from the
    teacher's and from every wider width's, each also with ``_k3`` where the block has a k5/k7
    depthwise conv, and ``slim_k3`` there; none for exempt kinds (see the module docstring).

    Args:
        layer: The layer (kept for symmetry with ``space_for``; the block decides).
        teacher_block: The teacher's block at the layer.

    Returns:
        Canonical specs, widest first, e.g. ``["slim_w0.75", "slim_w0.5", "slim_w0.25"]``.
    """
    del layer
    try:
        recipe = _recipe(teacher_block)
    except _NotCovered:
        return []
    seen = {tuple(_kept_units(group, 1.0) for group in recipe.groups)}
    widths = []
    for width in SLIM_WIDTHS:
        counts = tuple(_kept_units(group, width) for group in recipe.groups)
        if counts not in seen:
            seen.add(counts)
            widths.append(width)
    if recipe.depthwise is None:
        return [encode_spec("slim", {"width": w}) for w in widths]
    specs = [encode_spec("slim", {"kernel_size": 3})]
    for width in widths:
        specs += [encode_spec("slim", {"width": width}), encode_spec("slim", {"width": width, "kernel_size": 3})]
    return specs


# ---- importance and surgery ---------------------------------------------------------------------


def _input_norms(module: nn.Module) -> torch.Tensor:
    """``||W[:, c]||_2`` for each input channel ``c`` of a dense conv or a linear, in float64."""
    weight = module.weight.detach().to(device="cpu", dtype=torch.float64)
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)


def _order(block: nn.Module, group: _Group) -> torch.Tensor:
    """The group's units, most important first (see the module docstring for the score)."""
    score = _input_norms(block.get_submodule(group.consumer))
    if group.scales:
        gamma = torch.cat([block.get_submodule(p).weight.detach().to("cpu", torch.float64) for p in group.scales])
        score = score * gamma.abs()
    per_unit = score.reshape(group.tiles, group.units, group.unit_chs).sum(dim=(0, 2))
    # float64 on the CPU and a stable sort: the same teacher weights give the same order anywhere
    return torch.sort(per_unit, descending=True, stable=True).indices


def _channel_index(units: torch.Tensor, group: _Group, tiles: int) -> torch.Tensor:
    chs = (units[:, None] * group.unit_chs + torch.arange(group.unit_chs)).flatten()
    return torch.cat([chs + tile * group.units * group.unit_chs for tile in range(tiles)])


def _set(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:  # a buffer (BN running statistics)
        setattr(module, name, value.contiguous())


def _width(module: nn.Module, side: str) -> int:
    if isinstance(module, nn.BatchNorm2d):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if side == "out" else module.in_features
    return module.out_channels if side == "out" else module.in_channels


def _slice(module: nn.Module, side: str, index: torch.Tensor) -> None:
    """Keep channels ``index`` (in that order) of one axis of ``module``."""
    index = index.to(module.weight.device)
    if side == "in":
        _require(getattr(module, "groups", 1) == 1, f"a grouped consumer {type(module).__name__}")
        _set(module, "weight", module.weight.detach().index_select(1, index))
        if isinstance(module, nn.Linear):
            module.in_features = len(index)
        else:
            module.in_channels = len(index)
        return
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, name, None) is not None:
            _set(module, name, getattr(module, name).detach().index_select(0, index))
    if isinstance(module, nn.BatchNorm2d):
        module.num_features = len(index)
    elif isinstance(module, nn.Linear):
        module.out_features = len(index)
    else:  # Conv2d; a grouped one loses whole groups (``index`` keeps them whole), inputs too
        groups = module.groups
        if groups > 1:
            module.groups = len(index) // (module.out_channels // groups)
            module.in_channels = module.groups * (module.in_channels // groups)
        module.out_channels = len(index)


def _cut(block: nn.Module, group: _Group, kept: int) -> None:
    units = _order(block, group)[:kept]
    for member in group.members:
        module = block.get_submodule(member.path)
        expected = member.tiles * group.units * group.unit_chs
        _require(_width(module, member.side) == expected, f"{member.path} is not {expected} channels wide")
        _slice(module, member.side, _channel_index(units, group, member.tiles))
    for path, attribute in group.count_attrs:
        setattr(block.get_submodule(path), attribute, group.tiles * kept * group.unit_chs)


def _crop_kernel(conv: nn.Conv2d, kernel_size: int) -> None:
    """Keep the centre ``kernel_size`` x ``kernel_size`` taps (once-for-all's elastic kernel
    starts from the centre crop too); "same" padding shrinks with the kernel."""
    height, width = conv.kernel_size
    top, left = (height - kernel_size) // 2, (width - kernel_size) // 2
    _set(conv, "weight", conv.weight.detach()[..., top : top + kernel_size, left : left + kernel_size])
    symmetric = tuple((k - 1) // 2 * d for k, d in zip(conv.kernel_size, conv.dilation))
    conv.kernel_size = (kernel_size, kernel_size)
    if conv.padding == symmetric:
        conv.padding = tuple((kernel_size - 1) // 2 * d for d in conv.dilation)
    elif not (isinstance(conv.padding, str) or type(conv).__name__ == "Conv2dSame"):
        # Conv2dSame and padding="same" pad from the kernel in forward; anything else is unknown
        raise ValueError(f"cannot crop a {conv.kernel_size} conv padded {conv.padding}")


@torch.no_grad()
def build_slim(spec: str, teacher_block: nn.Module) -> nn.Module:
    """Cut candidate ``spec`` from a copy of ``teacher_block`` (which is left untouched).

    Args:
        spec: A slim spec, e.g. ``slim_w0.5``, ``slim_k3``, ``slim_w0.5_k3``.
        teacher_block: The teacher's block at the layer (one of the kinds in the module
            docstring's table).

    Returns:
        The slim block, in the mode of ``teacher_block``, with the teacher's class and
        state-dict keys; its hidden widths are ``slim_channels(spec, teacher_block)``.

    Raises:
        ValueError: For a block the spec does not apply to (an exempt kind, ``_k3`` without a
            k5/k7 depthwise conv), naming the reason.
    """
    recipe = _recipe_or_error(spec, teacher_block)
    width, kernel = _parse(spec)
    return _cut_copy(repr(spec), recipe, teacher_block, width, kernel)


def _cut_copy(what: str, recipe: _Recipe, teacher_block: nn.Module, width: float | None, kernel: int | None):
    block = copy.deepcopy(teacher_block)
    try:
        for group in recipe.groups if width is not None else ():
            _cut(block, group, _kept_units(group, width))
    except _NotCovered as why:
        raise ValueError(f"{what} cannot be cut from this {type(teacher_block).__name__}: {why}") from None
    if kernel is not None:
        _crop_kernel(block.get_submodule(recipe.depthwise), kernel)
    return block


@torch.no_grad()
def cut_block(teacher_block: nn.Module, width: float, kernel_size: int | None = None) -> nn.Module:
    """``build_slim`` at any width in (0, 1], not only the preset ones: the same importance, the
    same rounding to multiples of 8, the same surgery. For what is built outside the library
    (the bench's uniform-slim ablation cuts every block to one bisected width).

    Raises:
        ValueError: For a width outside (0, 1], or a block kind ``build_slim`` does not cut.
    """
    if not 0 < width <= 1:
        raise ValueError(f"width {width!r} is outside (0, 1]")
    what = f"width {width:g}"
    try:
        recipe = _recipe(teacher_block)
    except _NotCovered as why:
        raise ValueError(f"{what} cannot be cut from a {type(teacher_block).__name__}: {why}") from None
    if width < 1.0 and not recipe.groups:
        raise ValueError(f"a {type(teacher_block).__name__} has no hidden channels to cut (its width is its input's)")
    if kernel_size is not None and recipe.depthwise is None:
        raise ValueError(f"a {type(teacher_block).__name__} here has no k5/k7 depthwise conv to crop")
    return _cut_copy(what, recipe, teacher_block, width, kernel_size)
