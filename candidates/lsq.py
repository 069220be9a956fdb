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
determined (WAVE2.md suggests fitting the centre tap alone there: not done).

``least_squares_fresh`` gives the same start to a candidate built from random weights whose last
unit is linear (a conv + BN without activation: inverted residuals, depthwise-separable, ResNet
basic and bottleneck candidates; issue 14 item 2, as few-sample KD does): its BNs first take the
moments of the inputs (so that eval mode, where the fit runs, matches the batch statistics of
distillation), then its last conv, jointly with a 1x1 projection shortcut when it has one, is
fitted to the teacher block's *whole* output (less an identity shortcut), shrunk toward zero with
the ridge of least error on held-out images, and kept only where it beats the candidate as built
there. The other units keep their random weights: the fit is a regression on random features,
which distillation then trains on. ``TODO(limit)``: the
ghost bottleneck (a ghost module last), ``slim_k3`` kernel fits and SE ``conv_reduce`` bias
corrections (WAVE2.md's list) are not done. Distillation runs this on every slim candidate before
its first step (``lana.distill``, ``DistillConfig.ls_images``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

__all__ = ["LeastSquaresStart", "least_squares_fresh", "least_squares_start"]

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
    keep = _sample(len(x), positions, seed)
    x, y = x[keep].double(), y[keep].double()
    w0, b0 = _folded(conv, bn)
    before = _nmse(x @ w0.T + b0, y)
    weight, bias = _solve(x, y, w0, ridge)
    after = _nmse(x @ weight.T + bias, y)
    # with a BN, W stays un-folded: the BN's statistics hold the scale (see _write)
    _write(conv, bn, weight, bias, x)
    return LeastSquaresStart(proj, len(x), ridge, before, after)


def _moments_from(block: nn.Module, inputs: torch.Tensor, batch: int = 128) -> None:
    """Set every BN's running statistics to the moments it meets on ``inputs`` (train-mode
    forwards, cumulative average), so that eval mode computes what a batch of them would."""
    bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {m: m.momentum for m in bns}
    modes = {m: m.training for m in block.modules()}
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        block.train()
        with torch.no_grad():
            for start in range(0, len(inputs), batch):
                block(inputs[start : start + batch])
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode


def _linear_unit(unit: nn.Module, name: str) -> tuple[nn.Module, nn.Module]:
    """``(conv, bn)`` of a conv + BN unit without activation, ValueError otherwise."""
    from lana.candidates.blocks import ConvBnAct

    if not isinstance(unit, ConvBnAct) or not isinstance(unit.act, nn.Identity):
        raise ValueError(f"the last unit ({name}, a {type(unit).__name__}) is not a linear conv + BN")
    return unit.conv, unit.bn


def _last_linear_unit(candidate: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """``(path of the conv, conv, bn)`` of a fresh candidate's last unit, when it is a dense
    stride-1 conv + BN without activation; ValueError otherwise."""
    from lana.candidates.blocks import CandidateBlock

    if not isinstance(candidate, CandidateBlock):
        raise ValueError(f"a {type(candidate).__name__} is not a candidate built from a plan")
    name, last = list(candidate.body.named_children())[-1]
    conv, bn = _linear_unit(last, name)
    if conv.stride != (1, 1) or conv.groups != 1:
        raise ValueError(f"the last unit ({name}) is not a dense stride-1 conv")
    if not isinstance(candidate.crop, nn.Identity):
        raise ValueError("the candidate crops its output")
    return f"body.{name}.conv", conv, bn


def _projection_shortcut(candidate: nn.Module):
    """The candidate's shortcut when it is one 1x1 conv + BN (fitted jointly with the body), else None."""
    if not candidate.residual:
        return None
    try:
        conv, bn = _linear_unit(candidate.shortcut, "shortcut")
    except ValueError:
        return None
    return (conv, bn) if conv.kernel_size == (1, 1) and conv.groups == 1 else None


def _features(candidate: nn.Module, inputs: torch.Tensor, path: str, conv, shortcut) -> torch.Tensor:
    """Rows of what the fitted units read at each output pixel: the last conv's input (patches),
    then, with a projection shortcut, its strided input pixels."""
    rows = _input_rows(_capture(candidate, inputs, path, want_input=True), conv)
    if shortcut is not None:
        s = shortcut[0].stride
        rows = torch.cat([rows, _rows(inputs[:, :, :: s[0], :: s[1]], shortcut[0]).to(rows.dtype)], 1)
    return rows.double()


def _target(candidate: nn.Module, teacher: nn.Module, inputs: torch.Tensor, conv, shortcut) -> torch.Tensor:
    """Rows of what the fitted units must write: the teacher block's output, less the candidate's
    own shortcut when that is not fitted (the identity, a ghost projection)."""
    with torch.no_grad():
        target = teacher.eval()(inputs).double()
        if candidate.residual and shortcut is None:
            target = target - candidate.shortcut.eval()(inputs).double()
    return _rows(target, conv)


def _sample(rows: int, positions: int, seed: int) -> torch.Tensor | slice:
    if rows <= positions:
        return slice(None)
    return torch.randperm(rows, generator=torch.Generator().manual_seed(seed))[:positions]


_FRESH_RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def least_squares_fresh(
    candidate: nn.Module,
    teacher: nn.Module,
    inputs: torch.Tensor,
    positions: int = 20_000,
    ridges: tuple[float, ...] = _FRESH_RIDGES,
    seed: int = 0,
    validate: float = 0.25,
) -> LeastSquaresStart:
    """Fit a fresh candidate's last linear unit (and its 1x1 projection shortcut, jointly), in
    place, so that the candidate's output approximates the teacher block's on ``inputs``.

    A quarter of the images (``validate``) is held out: the ridge strength is the one of least
    error on them, and when no strength beats the candidate as built there, it is left as built
    (``nmse_after == nmse_before``), so that the start never makes a candidate worse than its
    random initialisation on images it did not see.

    Args:
        candidate: A candidate built from a plan (``build_candidate("ir_k3_e3", layer)``).
        teacher: The teacher's block at the layer (left untouched).
        inputs: The teacher network's activations at the layer's input, ``(B, *in_shape)``.
        positions: Pixels sampled for the fit; all of them when there are fewer.
        ridges: Ridge strengths tried, relative to ``trace(xᵀx) / d``, toward zero weights.
        seed: Seed of the pixel sample.
        validate: Share of the images held out to choose the ridge.

    Returns:
        The ``LeastSquaresStart`` record, on the held-out images: ``nmse_before`` is the error of
        the fitted units' output as built, ``nmse_after`` after the start; ``ridge`` the chosen one
        (0 when the candidate was left as built).

    Raises:
        ValueError: For a candidate whose last unit is not a linear dense conv + BN, or that crops.
    """
    path, conv, bn = _last_linear_unit(candidate)
    shortcut = _projection_shortcut(candidate)
    modes = {m: m.training for m in (*candidate.modules(), *teacher.modules())}
    try:
        _moments_from(candidate, inputs)
        n_val = max(1, int(round(validate * len(inputs)))) if len(inputs) > 1 else 0
        parts = {"fit": inputs[n_val:], "val": inputs[:n_val]} if n_val else {"fit": inputs, "val": inputs}
        x, y, keep = {}, {}, {}
        for part, images in parts.items():
            x[part] = _features(candidate, images, path, conv, shortcut)
            y[part] = _target(candidate, teacher, images, conv, shortcut)
            keep[part] = _sample(len(x[part]), positions, seed)
            x[part], y[part] = x[part][keep[part]], y[part][keep[part]]
        # what the fitted units write as built, on the held-out images (the "before")
        built = _rows(_capture(candidate, parts["val"], path.rsplit(".", 1)[0] + ".bn", want_input=False), conv)
        if shortcut is not None:  # the shortcut's own output is part of what the fit replaces
            built = built + _rows(_capture(candidate, parts["val"], "shortcut", want_input=False), conv)
        before = _nmse(built[keep["val"]].double(), y["val"])
        zero = torch.zeros(y["fit"].shape[1], x["fit"].shape[1], dtype=torch.float64)
        fits = {}
        for ridge in ridges:
            weight, bias = _solve(x["fit"], y["fit"], zero, ridge)
            fits[ridge] = (_nmse(x["val"] @ weight.T + bias, y["val"]), weight, bias)
        ridge = min(fits, key=lambda r: fits[r][0])
        if fits[ridge][0] >= before:
            return LeastSquaresStart(path, len(x["fit"]), 0.0, before, before)
        every, targets = (
            (torch.cat([x["fit"], x["val"]]), torch.cat([y["fit"], y["val"]])) if n_val else (x["fit"], y["fit"])
        )
        weight, bias = _solve(every, targets, zero, ridge)
        d = x["fit"].shape[1] - (shortcut[0].in_channels if shortcut is not None else 0)
        _write(conv, bn, weight[:, :d], bias, every[:, :d])
        if shortcut is not None:
            _write(*shortcut, weight[:, d:], torch.zeros_like(bias), every[:, d:])
        return LeastSquaresStart(path, len(x["fit"]), ridge, before, fits[ridge][0])
    finally:
        for m, mode in modes.items():
            m.training = mode
