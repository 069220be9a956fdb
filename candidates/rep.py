"""Structurally re-parameterisable blocks (RepVGG, Ding et al. 2021; MobileOne, Vasu et al. 2023).

While distilling, a rep unit sums several linear branches of the same input and applies one
activation: ``act(BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(x))``. Every branch is linear and the
1x1 kernel and the identity are kxk kernels with zeros around the centre, so in eval mode the sum
is one kxk conv with a bias. ``RepConvBnAct.fuse`` (or ``reparameterize`` on any module) folds
the branches into it, and the fused output equals the unfused one to float rounding (~1e-6).

Two candidate kinds use it (planned in ``lana.candidates.builder``):

* ``rep_k3``: one RepVGG unit, kxk + 1x1 + identity-BN branches, then the activation;
* ``repdw_k3``: MobileOne's block: a depthwise rep unit (depthwise kxk + depthwise 1x1 +
  identity-BN branches, activation), then a pointwise rep unit (1x1 + identity-BN branches,
  activation).

The identity branch exists only where the unit keeps its shape (same channels, stride 1); where
it does not (stride 2, a change of channels) the 1x1 branch, with the unit's stride, plays the
projection's part, as in RepVGG's downsampling units. A rep candidate therefore has no outer
shortcut: the identity *is* the residual, and it folds away, so what ships is a plain
conv -> act chain with no add and no second pass over memory, which is RepVGG's point.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .blocks import ACT_LAYERS, ConvBnAct

__all__ = ["RepConvBnAct", "RepOp", "reparameterize"]


@dataclasses.dataclass(frozen=True)
class RepOp:
    """A rep unit of a candidate's body, as built and trained (before fusion).

    Attributes:
        name: The unit's name in the body.
        in_chs, out_chs, kernel_size, stride, groups: Those of the fused conv.
        act: The activation after the sum, or None.
    """

    name: str
    in_chs: int
    out_chs: int
    kernel_size: int
    stride: int = 1
    groups: int = 1
    act: str | None = None

    def build(self) -> RepConvBnAct:
        return RepConvBnAct(self.in_chs, self.out_chs, self.kernel_size, self.stride, self.groups, self.act)

    def cost(self, height: int, width: int, inference: bool = False) -> tuple[int, int, int, int]:
        """``(params, macs, out_h, out_w)`` at an input of ``height x width``.

        Args:
            inference: Count the fused unit (one kxk conv with a bias) instead of the branches.
        """
        out_h, out_w = -(-height // self.stride), -(-width // self.stride)
        per_pixel = self.out_chs * (self.in_chs // self.groups)  # one tap of the kernel
        kernels = [self.kernel_size**2] + ([1] if self.kernel_size > 1 else [])
        if inference:  # one kxk conv with a bias
            weights = per_pixel * kernels[0]
            return weights + self.out_chs, weights * out_h * out_w, out_h, out_w
        weights = per_pixel * sum(kernels)
        bns = len(kernels) + (self.in_chs == self.out_chs and self.stride == 1)  # + identity
        return weights + 2 * self.out_chs * bns, weights * out_h * out_w, out_h, out_w


class RepConvBnAct(nn.Module):
    """``act(conv(x) + sum of extra branches(x))``; after ``fuse()``, ``act(conv(x))``.

    Before fusion ``conv`` is a kxk ``ConvBnAct`` without activation and ``extra`` holds
    ``conv_1x1`` (a 1x1 ``ConvBnAct``, for k > 1) and ``identity`` (a ``BatchNorm2d``, only when
    ``in_chs == out_chs`` and ``stride == 1``). After fusion ``conv`` is one ``nn.Conv2d`` with
    a bias and ``extra`` is empty; the forward is the same code, with no data-dependent control
    flow, so both forms script and export.

    Args:
        in_chs, out_chs, kernel_size, stride, groups: As ``nn.Conv2d`` (padding ``k // 2``).
        act: Activation name (``lana.candidates.blocks.ACT_LAYERS``) or None.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
    ):
        super().__init__()
        self.conv: nn.Module = ConvBnAct(in_chs, out_chs, kernel_size, stride, groups, act=None)
        extra: OrderedDict[str, nn.Module] = OrderedDict()
        if kernel_size > 1:
            extra["conv_1x1"] = ConvBnAct(in_chs, out_chs, 1, stride, groups, act=None)
        if in_chs == out_chs and stride == 1:
            extra["identity"] = nn.BatchNorm2d(out_chs)
        self.extra = nn.ModuleDict(extra)
        self.act = ACT_LAYERS[act]() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        for branch in self.extra.values():
            out = out + branch(x)
        return self.act(out)

    @property
    def fused(self) -> bool:
        return isinstance(self.conv, nn.Conv2d)

    def start_near_identity(self) -> None:
        """Zero the BN scale of the conv branches when an identity branch exists, so that the
        unit starts as ``act(x)`` (``x`` itself for the non-negative inputs a ReLU network feeds
        it): the same start as the ``zero_init_last`` of the residual families."""
        if self.fused or "identity" not in self.extra:
            return
        branches = [self.conv] + [self.extra[n] for n in ("conv_1x1",) if n in self.extra]
        for branch in branches:
            nn.init.zeros_(branch.bn.weight)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold every branch into one kxk conv with a bias, in place (idempotent).

        Uses the BN running statistics: the fused unit equals the unfused one in eval mode.
        """
        if self.fused:
            return
        conv = self.conv.conv
        kernel, bias = _fold(conv.weight, self.conv.bn)
        pad = conv.kernel_size[0] // 2
        if "conv_1x1" in self.extra:
            branch = self.extra["conv_1x1"]
            kernel_1x1, bias_1x1 = _fold(branch.conv.weight, branch.bn)
            kernel, bias = kernel + F.pad(kernel_1x1, [pad] * 4), bias + bias_1x1
        if "identity" in self.extra:
            # the identity as a grouped kxk kernel: output channel c reads input c, which is
            # channel c % (in / groups) of its group, at the centre tap
            in_per_group = conv.in_channels // conv.groups
            eye = torch.zeros_like(conv.weight)
            channels = torch.arange(conv.out_channels, device=eye.device)
            eye[channels, channels % in_per_group, pad, pad] = 1
            kernel_id, bias_id = _fold(eye, self.extra["identity"])
            kernel, bias = kernel + kernel_id, bias + bias_id
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            groups=conv.groups,
            bias=True,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.conv, self.extra = fused, nn.ModuleDict()


def _fold(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kernel, bias)`` of ``bn(conv(x))`` for a bias-free conv of ``weight``."""
    kernel, bias = fuse_conv_bn_weights(weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return kernel.detach(), bias.detach()


def reparameterize(module: nn.Module) -> nn.Module:
    """Fuse every ``RepConvBnAct`` inside ``module`` (the module itself included), in place.

    Call it on an eval-mode module (the fusion reads BN running statistics); modules of other
    kinds are left as they are. For a fused *copy* use ``lana.candidates.inference_form``.

    Returns:
        ``module``, for chaining.
    """
    for sub in list(module.modules()):
        if isinstance(sub, RepConvBnAct):
            sub.fuse()
    return module
