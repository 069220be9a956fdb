"""Ghost modules (GhostNet, Han et al. 2020): half the feature maps from cheap depthwise convs.

A ghost module replaces a 1x1 conv to ``out`` channels: a *primary* 1x1 conv makes only
``ceil(out / r)`` intrinsic maps, a *cheap* depthwise kxk conv makes ``r - 1`` "ghost" maps from
each of them, and the two are concatenated and cut to ``out`` channels. A ghost bottleneck is
timm's ``GhostBottleneck`` (``timm/models/ghostnet.py``): ghost module (expand, ReLU) ->
depthwise kxk conv (only when the stride is above 1, linear) -> [SE] -> ghost module (project,
linear), plus a shortcut that is projected, as in timm, by a depthwise kxk conv (the stride) and
a 1x1 conv when the shape changes.

Two choices differ from timm's GhostNet and are fixed for the whole family:

* the cheap conv has the spec's kernel ``k`` (GhostNet always uses 3 there and ``k`` only for
  the stride conv), so ``k`` is what makes ``ghost_k5_*`` see farther at every stride;
* the expanded width is about ``3 * in_chs`` (``GHOST_EXPANSION``): GhostNet's own expansions
  run from 1 to 6 and average about 3, and one width keeps the family at 8 specs. At r=2 a ghost
  bottleneck then costs about half the MACs of ``ir_k3_e3``, at r=4 a quarter. The width is
  rounded to a multiple of ``8 * r`` so that the primary conv, and the depthwise cheap conv on
  its maps, have a multiple of 8 channels: fbgemm's int8 depthwise kernel is 40x slower
  otherwise (3x3, 28x28, batch 64: 700 ms on 60 channels, 17 ms on 64).

The builder (``lana.candidates.builder``) plans a ghost bottleneck as a ``GhostOp`` followed by
ordinary ``ConvOp`` / ``SEOp`` units; ``GhostOp`` brings its own module and its own cost.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .blocks import ConvBnAct

__all__ = ["GHOST_EXPANSION", "GhostModule", "GhostOp"]

GHOST_EXPANSION = 3


@dataclasses.dataclass(frozen=True)
class GhostOp:
    """A ghost module unit of a candidate's body (``act=None``: linear).

    Attributes:
        name: The unit's name in the body (``ghost1``, ``ghost2``).
        in_chs, out_chs: Channels in and out.
        ratio: ``r``: the primary conv makes ``ceil(out_chs / r)`` maps, the cheap conv
            ``r - 1`` times as many.
        kernel_size: The cheap depthwise conv's kernel.
        act: Activation after both convs, or None.
    """

    name: str
    in_chs: int
    out_chs: int
    ratio: int
    kernel_size: int
    act: str | None = None

    @property
    def primary_chs(self) -> int:
        return math.ceil(self.out_chs / self.ratio)

    @property
    def cheap_chs(self) -> int:
        return self.primary_chs * (self.ratio - 1)

    def build(self) -> GhostModule:
        return GhostModule(self.in_chs, self.out_chs, self.ratio, self.kernel_size, self.act)

    def cost(self, height: int, width: int, inference: bool = False) -> tuple[int, int, int, int]:
        """``(params, macs, out_h, out_w)`` at an input of ``height x width`` (stride 1).

        Both convs are counted in full: the cheap conv makes ``primary * (r - 1)`` maps even when
        the cut to ``out_chs`` then drops a few of them, exactly as the module computes them.

        Args:
            inference: Count the BN-folded module (a bias per channel instead of BN's two).
        """
        primary = self.in_chs * self.primary_chs  # 1x1
        cheap = self.cheap_chs * self.kernel_size**2  # depthwise: one input map per output
        per_channel = 1 if inference else 2
        params = primary + cheap + per_channel * (self.primary_chs + self.cheap_chs)
        return params, (primary + cheap) * height * width, height, width


class GhostModule(nn.Module):
    """``cat(primary(x), cheap(primary(x)))[:, :out_chs]``, as timm's ``GhostModule``.

    Args:
        in_chs, out_chs: Channels in and out.
        ratio: ``r`` of GhostNet: 1/r of the output comes from the 1x1 primary conv.
        kernel_size: Kernel of the cheap depthwise conv.
        act: Activation after each conv, or None for a linear module.
    """

    # TorchScript constants: the scripted graph keeps only the branch this module takes
    __constants__ = ["out_chs", "trim"]

    def __init__(self, in_chs: int, out_chs: int, ratio: int, kernel_size: int, act: str | None = "relu"):
        super().__init__()
        primary_chs = math.ceil(out_chs / ratio)
        self.out_chs = out_chs
        # The cut is only needed when r does not divide out_chs (never for the expansion, a
        # multiple of 8); skipping it otherwise also keeps int8 graphs int8, where FX
        # quantization runs a channel slice in float.
        self.trim = primary_chs * ratio != out_chs
        self.primary = ConvBnAct(in_chs, primary_chs, 1, act=act)
        self.cheap = ConvBnAct(primary_chs, primary_chs * (ratio - 1), kernel_size, groups=primary_chs, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.primary(x)
        out = torch.cat([x, self.cheap(x)], dim=1)
        if self.trim:  # a constant of the built module, not a test on the data
            # a slice with a constant bound: exports to ONNX as one Slice, like the Crop block
            out = out[:, : self.out_chs]
        return out

    def extra_repr(self) -> str:
        return f"out_chs={self.out_chs}, trim={self.trim}"
