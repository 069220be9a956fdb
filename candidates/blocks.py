"""The nn.Modules that candidate operations are made of.

Every candidate is a ``CandidateBlock``: a ``body`` of conv -> BN -> act units (and at most one
squeeze-excite), an optional residual ``shortcut`` and, only for layers whose output size is not
``ceil(input / stride)``, a ``Crop``. All choices are made when the block is built, from the layer's
shapes, so the forward pass has no data-dependent Python control flow and exports to ONNX and
TorchScript as it is.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ACT_LAYERS",
    "CandidateBlock",
    "ConvBnAct",
    "Crop",
    "SqueezeExcite",
    "init_weights",
    "make_divisible",
]

ACT_LAYERS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "hswish": nn.Hardswish}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, as ``timm.layers.make_divisible`` does.

    Multiples of 8 keep convs on the fast paths of cuDNN and oneDNN; rounding never goes more
    than 10% below ``value``.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> activation; ``act=None`` leaves it linear.

    Padding is ``kernel_size // 2``, so with stride ``s`` an ``H``-high input gives ``ceil(H / s)``
    rows, the same as timm's and TensorFlow's "same" padding for the odd kernels we use.
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
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = ACT_LAYERS[act]() if act else nn.Identity()


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018) with a sigmoid gate, as in EfficientNet."""

    def __init__(self, chs: int, rd_chs: int, act: str = "relu"):
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = ACT_LAYERS[act]()
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over H, W exports to ONNX as ReduceMean; AdaptiveAvgPool2d(1) would work too
        scale = x.mean((2, 3), keepdim=True)
        scale = self.conv_expand(self.act(self.conv_reduce(scale)))
        return x * self.gate(scale)


class Crop(nn.Module):
    """Keep the first ``height`` rows and ``width`` columns.

    For the rare layer that downsamples by a non-integer factor (15 -> 10 rows, say): the body
    overshoots by a few rows and the crop drops them, like a floor-mode pool would. A slice
    with constant bounds exports everywhere, unlike an adaptive pool to a size that is not a
    divisor of its input (no ONNX export).
    """

    def __init__(self, height: int, width: int):
        super().__init__()
        self.height, self.width = height, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.height, : self.width]

    def extra_repr(self) -> str:
        return f"height={self.height}, width={self.width}"


class CandidateBlock(nn.Module):
    """``crop(body(x) [+ shortcut(x)])``: the one module class every built candidate uses.

    Args:
        body: The candidate's layers, applied in order.
        shortcut: ``nn.Identity`` when the layer keeps its shape, else a projection; ignored
            when ``residual`` is False.
        residual: Whether to add the shortcut; fixed at build time from the layer's shapes.
        crop: ``nn.Identity``, or a ``Crop`` for the rare layer whose output size is not
            ``ceil(input / stride)``.
    """

    # a TorchScript constant: the scripted graph keeps only the branch this block takes
    __constants__ = ["residual"]

    def __init__(self, body: nn.Sequential, shortcut: nn.Module, residual: bool, crop: nn.Module):
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.residual = residual
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.residual:  # a constant of the built block, not a test on the data
            out = out + self.shortcut(x)
        return self.crop(out)


def init_weights(block: CandidateBlock) -> None:
    """Initialise a fresh candidate so that distillation starts near a good function.

    Convs get He init (fan-out, as torchvision's ResNet); biases and BN shifts start at zero.
    In a residual block the last BN of the body starts with gamma = 0 (Goyal et al. 2017,
    timm's ``zero_init_last``): a shape-preserving candidate is then exactly the identity, i.e.
    the ``id`` candidate, which is a far better start for a layer of a trained residual
    network than a random function. When the body's last unit holds several BNs side by side
    (a ghost module concatenates two conv-BN outputs), all of them start at zero.
    """
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if block.residual:
        units = [u for u in block.body if any(isinstance(m, nn.BatchNorm2d) for m in u.modules())]
        for module in units[-1].modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.weight)
