"""A closed-form start for slim candidates: refit the block's last linear layer by least squares.

Slicing a block's hidden channels (``lana.candidates.slim``) removes what the dropped channels
contributed to the projection; issue 14's probe measured a normalised MSE of 1.4-2.0 on the first
block of every stage of Lite0 at width 0.5, brought to 0.02-0.15 by refitting the projection alone.
``least_squares_start`` does that refit, on a batch of the teacher's input activations at the layer:

1. run the slim block on the inputs and record what its projection reads, ``x`` (the kept
   channels, after the slim block's own activations and SE gates), and run the teacher and record
   what its projection unit writes, ``y`` (after its BN, before the residual add or layer scale);
2. on ``positions`` sampled pixels, accumulate ``AᵀA`` and ``Aᵀy`` in float64 (``A = [x, 1]``) and
   solve the ridge problem ``min ||A θ - y||² + λ ||W - W₀||²``, which shrinks the weights toward
   the sliced teacher's own ``W₀`` (its conv folded with its BN), the bias unpenalised, with
   ``λ = ridge * trace(xᵀx) / d``, so that ``ridge`` means the same at every width and scale;
3. write ``W`` into the conv and set the BN after it to reproduce ``W·x + b`` in eval *and* train
   mode: running mean and variance = the moments of ``W·x`` on the sample, ``γ = sqrt(var + eps)``,
   ``β = mean + b`` (candidates distil with BN in train mode, where a bias folded into the running
   statistics alone would be lost). A projection without BN (ConvNeXt's ``fc2``) takes ``b`` as
   its bias.

Covered: the blocks whose last unit is a 1x1 conv (+ BN) or a linear: inverted residual, EdgeResidual,
ResNet and RegNet bottlenecks, ConvNeXt; and ResNet's basic block, whose last conv is 3x3: its rows
are the kept channels' 3x3 patches (``unfold``, ``d = 9 x kept``). On maps of 2x2 or less most taps
see padding and there are few pixels; the ridge toward the sliced teacher keeps those fits
determined (WAVE2.md suggests fitting the centre tap alone there: not done). ``TODO(limit)``: the
ghost bottleneck (a ghost module last), ``slim_k3`` kernel fits and SE ``conv_reduce`` bias
corrections (WAVE2.md's list) are not done. Distillation runs this on every slim candidate before
its first step (``lana.distill``, ``DistillConfig.ls_images``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["LeastSquaresStart", "least_squares_start"]

# (block class name, projection path, BN path or None): the block's last linear unit
_PROJECTIONS = {
    "InvertedResidual": ("conv_pwl", "bn3"),
    "EdgeResidual": ("conv_pwl", "bn2"),
    "BasicBlock": ("conv2", "bn2"),  # a 3x3 conv: its input rows are the kept channels' 3x3 patches
    "Bottleneck": ("conv3", "bn3"),  # resnet's; regnet's names its units conv3.conv / conv3.bn
    "ConvNeXtBlock": ("mlp.fc2", None),
}
_CHUNK = 4096  # rows per float64 accumulation step: ~40 MB at d = 1152


@dataclasses.dataclass(frozen=True)
class LeastSquaresStart:
    """What a least-squares start did at one block.

    Attributes:
        projection: Path of the refitted conv or linear.
        positions: Pixels the fit used.
        ridge: The ridge strength, relative to ``trace(xᵀx) / d``.
        nmse_before: Normalised MSE of the projection unit's output against the teacher's, on
            the fitted pixels, before the fit (``mean((ŷ - y)²) / var(y)``).
        nmse_after: The same after the fit.
    """

    projection: str
    positions: int
    ridge: float
    nmse_before: float
    nmse_after: float


def _projection(block: nn.Module) -> tuple[str, str | None]:
    kind = type(block).__name__
    if kind not in _PROJECTIONS:
        covered = ", ".join(_PROJECTIONS)
        raise ValueError(f"no least-squares start for a {kind} yet (covered: {covered})")
    proj, bn = _PROJECTIONS[kind]
    if not isinstance(getattr(block, "conv3", None), nn.Conv2d) and kind == "Bottleneck":
        proj, bn = "conv3.conv", "conv3.bn"  # RegNet's ConvNormAct units
    module = block.get_submodule(proj)
    square = module.kernel_size == (1, 1) or kind == "BasicBlock"
    if isinstance(module, nn.Conv2d) and (not square or module.stride != (1, 1) or module.groups != 1):
        raise ValueError(f"{proj} of this {kind} is not a dense stride-1 conv")
    return proj, bn


def _rows(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Pixels as rows: ``(N, C)`` from an NCHW conv tensor or a channels-last linear one."""
    if isinstance(module, nn.Linear):
        return tensor.reshape(-1, tensor.shape[-1])
    return tensor.permute(0, 2, 3, 1).reshape(-1, tensor.shape[1])


def _input_rows(tensor: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """What a conv reads at each output pixel, as rows: for a kxk conv the ``C*k*k`` patch
    (``unfold``: channel-major, the order of ``weight.reshape(out, -1)``), else the pixel."""
    if not isinstance(module, nn.Conv2d) or module.kernel_size == (1, 1):
        return _rows(tensor, module)
    patches = torch.nn.functional.unfold(
        tensor, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride
    )  # (B, C*k*k, L), L in the output's row-major pixel order
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


@torch.no_grad()
def _capture(block: nn.Module, inputs: torch.Tensor, path: str, want_input: bool) -> torch.Tensor:
    """The input to (or output of) ``block``'s module ``path`` on ``inputs``, as float64 rows."""
    module, seen = block.get_submodule(path), []
    # a copy: ResNet adds the shortcut to bn3's output in place (``x += shortcut``)
    hook = module.register_forward_hook(lambda _m, args, out: seen.append((args[0] if want_input else out).clone()))
    modes = {m: m.training for m in block.modules()}
    try:
        block.eval()(inputs)
    finally:
        hook.remove()
        for m, mode in modes.items():
            m.training = mode
    return seen[0]


def _folded(conv: nn.Module, bn: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W₀, b₀)`` of the unit in eval mode, as an ``(out, in)`` matrix and a bias (float64)."""
    weight = conv.weight.detach().double().reshape(conv.weight.shape[0], -1)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if bn is None:
        return weight, bias
    scale = bn.weight.detach().double() / (bn.running_var.double() + bn.eps).sqrt()
    return weight * scale[:, None], (bias - bn.running_mean.double()) * scale + bn.bias.detach().double()


def _solve(x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares ``y ≈ W x + b`` shrunk toward ``W₀``; returns ``(W, b)``."""
    d = x.shape[1]
    gram = torch.zeros(d + 1, d + 1, dtype=torch.float64)
    cross = torch.zeros(d + 1, y.shape[1], dtype=torch.float64)
    for start in range(0, len(x), _CHUNK):
        rows = torch.cat([x[start : start + _CHUNK], torch.ones(len(x[start : start + _CHUNK]), 1)], 1).double()
        gram += rows.T @ rows
        cross += rows.T @ y[start : start + _CHUNK].double()
    lam = ridge * torch.trace(gram[:d, :d]) / d
    penalty = torch.ones(d + 1, dtype=torch.float64)
    penalty[d] = 0.0  # the bias is free: the removed channels' mean has to go somewhere
    prior = torch.cat([w0.T, torch.zeros(1, w0.shape[0], dtype=torch.float64)])
    theta = torch.linalg.solve(gram + lam * torch.diag(penalty), cross + lam * penalty[:, None] * prior)
    return theta[:d].T, theta[d]


def _nmse(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(((prediction - target) ** 2).mean() / target.var(dim=0, unbiased=False).mean().clamp_min(1e-12))


@torch.no_grad()
def _write(conv: nn.Module, bn: nn.Module | None, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> None:
    """Put ``W`` into the conv and make the unit compute ``W·x + b`` in eval and train mode."""
    conv.weight.copy_(weight.reshape(conv.weight.shape).to(conv.weight.dtype))
    if bn is None:
        conv.bias.copy_(bias.to(conv.bias.dtype))
        return
    if conv.bias is not None:
        conv.bias.zero_()
    wx = x.double() @ weight.T
    mean, var = wx.mean(0), wx.var(0, unbiased=False)
    bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
    bn.running_var.copy_(var.to(bn.running_var.dtype))
    bn.weight.copy_((var + bn.eps).sqrt().to(bn.weight.dtype))
    bn.bias.copy_((mean + bias).to(bn.bias.dtype))


def least_squares_start(
    slim: nn.Module,
    teacher: nn.Module,
    inputs: torch.Tensor,
    positions: int = 20_000,
    ridge: float = 1e-2,
    seed: int = 0,
) -> LeastSquaresStart:
    """Refit ``slim``'s last linear unit, in place, to the teacher's on ``inputs``.

    Args:
        slim: A slim candidate (``build_candidate("slim_w0.5", layer, teacher_block=teacher)``).
        teacher: The teacher's block at the layer (left untouched).
        inputs: The teacher network's activations at the layer's input, ``(B, *in_shape)``;
            small maps need more images for the same number of pixels.
        positions: Pixels (rows) sampled for the fit; all of them when there are fewer.
        ridge: Ridge strength relative to ``trace(xᵀx) / d`` (``d``: the kept channels).
        seed: Seed of the pixel sample.

    Returns:
        The ``LeastSquaresStart`` record (normalised MSE of the unit before and after).

    Raises:
        ValueError: For a block kind without a covered last unit.
    """
    proj, bn_path = _projection(slim)
    conv = slim.get_submodule(proj)
    bn = slim.get_submodule(bn_path) if bn_path else None
    x = _input_rows(_capture(slim, inputs, proj, want_input=True), conv)
    y = _rows(_capture(teacher, inputs, bn_path or proj, want_input=False), conv)
    if len(x) > positions:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:positions]
        x, y = x[keep], y[keep]
    x, y = x.double(), y.double()
    w0, b0 = _folded(conv, bn)
    before = _nmse(x @ w0.T + b0, y)
    weight, bias = _solve(x, y, w0, ridge)
    after = _nmse(x @ weight.T + bias, y)
    # with a BN, W stays un-folded: the BN's statistics hold the scale (see _write)
    _write(conv, bn, weight, bias, x)
    return LeastSquaresStart(proj, len(x), ridge, before, after)
