"""What a user would do instead of lana, at lana's measured latency (issue 8).

* **sibling**: a smaller network of the teacher's family, trained from scratch with the teacher's
  recipe plus KD from the teacher. W1's is the teacher itself at reduced width (timm's ResNet takes
  ``channels``/``stem_width``), because a width multiplier can be set to any latency, which resnet10t
  or resnet14t cannot: they are single points, rarely within 5% of a budget. W2's is LCNet (or
  MobileNetV3-small) at a channel multiplier: the CPU-oriented timm nets of Lite0's class.
* **prune**: structured channel pruning of the teacher with Torch-Pruning (DepGraph groups, L2
  group-magnitude importance, the same ratio in every layer, channels rounded to 8), the ratio found
  by bisection on measured latency; then the same KD fine-tuning as lana's student.
* **uniform slim** (an ablation, not a competitor): every block of the teacher cut to one width by
  lana's own slim surgery (:func:`lana.candidates.slim.cut_block`), the width bisected to lana's
  measured latency, each block refitted by lana's least-squares start, then the same fine-tuning.
  lana minus uniform slim is what choosing per layer adds.
* **random** / **greedy**: plans inside lana's own library, to show what the exact ILP adds: the
  best (by predicted score) of N random feasible plans, and a greedy per-layer choice.

Latency is matched by :func:`match_latency`: bisection on one knob (width, pruning ratio), each
step timed paired with the reference (:func:`lana.paired.time_relative`: short blocks alternating
the two models, the median of the blocks' ratios), as lana's own selection and the bench's final
pass are. Until 2026-12 it divided two medians of interleaved rounds taken seconds apart, and W1's
FastNAS, "within [0.95, 1.0] of the budget" by that measure, came out at 1.075x lana's student
(0.982 of the budget) in the final paired pass: unmatched (``bench/results/W1.json`` at c2eb1e1).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from lana.select import _costs, plan_of
from lana.select import greedy_choice as greedy_plan

__all__ = [
    "KnobOutOfRange",
    "LatencyMatch",
    "greedy_plan",
    "match_latency",
    "plan_of",
    "prune_model",
    "random_feasible_plans",
    "sibling_model",
    "uniform_slim_model",
    "least_squares_blocks",
]

log = logging.getLogger(__name__)

# Stem width of the BasicBlock ResNets that a width-scaled sibling can be made of (timm defaults).
_RESNET_STEM_WIDTH = {"resnet10t": 32, "resnet14t": 32, "resnet18": 64, "resnet18d": 32, "resnet34": 64}
_RESNET_CHANNELS = (64, 128, 256, 512)


@dataclass(frozen=True)
class LatencyMatch:
    """How a baseline's latency was matched to lana's student.

    Attributes:
        knob: the width multiplier or pruning ratio of the model returned.
        ratio: its latency over the target's, timed paired on the budget's table
            (:func:`lana.paired.time_relative`), over ``goal``.
        matched: ``|ratio - 1| <= tolerance``, or inside ``band``.
        tries: every ``(knob, ratio)`` tried, in order.
        seconds: wall time of the search (building and timing).
        interval: the 95% interval of ``ratio`` (the paired blocks' order statistics, over ``goal``).
    """

    knob: float
    ratio: float
    matched: bool
    tries: tuple[tuple[float, float], ...]
    seconds: float
    interval: tuple[float, float] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


class KnobOutOfRange(ValueError):
    """A competitor's builder cannot make a model at this knob; ``side``: ``"low"`` when the knob
    is under what it can build (the bisection moves up), ``"high"`` when over it."""

    def __init__(self, message: str, side: str):
        if side not in ("low", "high"):
            raise ValueError(f"side must be 'low' or 'high', got {side!r}")
        super().__init__(message)
        self.side = side


def match_latency(
    make: Callable[[float], nn.Module],
    target: nn.Module,
    input_shape,
    table: str,
    low: float,
    high: float,
    increasing: bool = True,
    tolerance: float = 0.05,
    iters: int = 8,
    blocks: int = 20,
    threads: int | None = None,
    goal: float = 1.0,
    band: tuple[float, float] | None = None,
) -> tuple[nn.Module, LatencyMatch]:
    """Bisect ``knob`` in ``[low, high]`` until ``make(knob)`` takes ``goal`` x ``target``'s time.

    Args:
        make: builds the model at a knob value (untrained weights are fine: latency ignores them).
        increasing: latency grows with the knob (a width) rather than falls (a pruning ratio).
        tolerance: without ``band``, stop once the ratio is within half of it of ``goal`` (the
            final, longer measurement must still land within ``tolerance``); else return the
            closest model tried.
        goal: the latency wanted, as a factor of ``target``'s (a budget ``0.5x`` of the teacher).
        band: accept ``[band[0], band[1]] x goal`` (``(0.95, 1.0)``: at or under the budget, as lana
            must be), aiming at its middle; ``ratio`` and ``matched`` are then relative to ``goal``.
        blocks: paired blocks per step at first (:func:`lana.paired.time_pairs`; up to 3x as many
            while the ratio's interval is wider than 1% either side).

    A knob ``make`` cannot build (it raises :class:`KnobOutOfRange`) is a step toward the side it
    names, untimed (``None`` in ``tries``): W2 at 0.35x (bf511ec) bisected FastNAS's FLOPs share
    from 15.1% (1.058x the budget) to 9.1%, under its smallest subnet's 10.6%, and Model Optimizer's
    "NOT all constraints can be satisfied" ended the row as a failure of FastNAS.

    Raises:
        KnobOutOfRange: no knob tried could be built.
    """
    from lana.paired import band_rank, time_relative

    lo, hi = band if band else (1 - tolerance / 2, 1 + tolerance / 2)
    aim = (lo + hi) / 2
    start = time.perf_counter()
    tries, best, last_error = [], None, None
    for _ in range(iters):
        knob = (low + high) / 2
        try:
            model = make(knob).eval()
        except KnobOutOfRange as error:  # e.g. FastNAS's smallest subnet: move the knob back into the range
            tries.append((knob, None))
            log.info("latency match: knob %.4f is out of the method's range (%s): trying %s", knob, error.side,
                     "higher" if error.side == "low" else "lower")  # fmt: skip
            if error.side == "low":
                low = knob
            else:
                high = knob
            last_error = error
            continue
        timed = time_relative({"candidate": model}, target, input_shape, table, threads=threads, blocks=blocks,
                              max_blocks=3 * blocks)["candidate"]  # fmt: skip
        ratio = timed.ratio / goal
        tries.append((knob, ratio))
        log.info("latency match: knob %.4f -> %.3f x the goal [%.3f, %.3f], %d blocks", knob, ratio,
                 timed.low / goal, timed.high / goal, timed.blocks)  # fmt: skip
        inside = lo <= ratio <= hi
        if best is None or band_rank(ratio, (lo, hi)) > band_rank(best[1], (lo, hi)):
            best = (knob, ratio, model, (timed.low / goal, timed.high / goal))
        if inside:
            break
        if (ratio > aim) == increasing:
            high = knob
        else:
            low = knob
    if best is None:  # every knob tried was out of the method's range
        raise last_error
    knob, ratio, model, interval = best
    matched = lo <= ratio <= hi if band else abs(ratio - 1) <= tolerance
    return model, LatencyMatch(knob, ratio, matched, tuple(tries), time.perf_counter() - start, interval)


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def sibling_model(family: str, width: float, num_classes: int) -> nn.Module:
    """A smaller timm network of ``family`` at channel multiplier ``width`` (random weights).

    Args:
        family: a BasicBlock ResNet (``resnet18``, ``resnet10t``, ...: the teacher at reduced
            width, channels rounded to 8), ``lcnet`` or ``mobilenetv3_small``.
    """
    import timm

    if family in _RESNET_STEM_WIDTH:
        # timm's ResNet entry points pass keyword arguments through to the constructor
        return timm.create_model(
            family,
            num_classes=num_classes,
            channels=tuple(_round8(c * width) for c in _RESNET_CHANNELS),
            stem_width=_round8(_RESNET_STEM_WIDTH[family] * width),
        )
    from timm.models import mobilenetv3

    # TODO(limit): timm exposes the channel multiplier of these only through private generators
    # (the public names fix it: lcnet_050 = 0.5); a continuous width is what matching needs.
    if family == "lcnet":
        return mobilenetv3._gen_lcnet("lcnet_100", width, num_classes=num_classes)
    if family == "mobilenetv3_small":
        return mobilenetv3._gen_mobilenet_v3("mobilenetv3_small_100", width, num_classes=num_classes)
    raise ValueError(
        f"unknown sibling family {family!r}; known: {', '.join([*_RESNET_STEM_WIDTH, 'lcnet', 'mobilenetv3_small'])}"
    )


def prune_model(teacher: nn.Module, ratio: float, input_shape, round_to: int = 8) -> nn.Module:
    """A copy of ``teacher`` with ``ratio`` of the channels of every prunable group removed.

    Torch-Pruning's DepGraph finds the coupled layers (residual adds, depthwise convs, BN) and
    removes them together; importance is the L2 magnitude of each channel group. The classifier
    is left whole; layer-wise (not global) pruning keeps every stage, as a user would by default.
    """
    import torch_pruning as tp

    model = copy.deepcopy(teacher).cpu().eval()
    for p in model.parameters():  # Torch-Pruning leaves frozen layers alone (KD freezes the teacher)
        p.requires_grad_(True)
    if ratio <= 0:
        return model
    example = torch.randn(1, *input_shape)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[model.get_classifier()],
        round_to=round_to,
    )
    pruner.step()
    return model.eval()


def uniform_slim_model(teacher: nn.Module, width: float, input_shape) -> nn.Module:
    """A copy of ``teacher`` with every block that ``find_layers`` returns cut to ``width`` by
    lana's slim surgery; the block kinds it exempts (no hidden channels) stay the teacher's."""
    from lana.candidates.slim import cut_block
    from lana.layers import find_layers, get_layer, replace_layer

    model = copy.deepcopy(teacher).cpu().eval()
    for layer in find_layers(teacher, tuple(input_shape)):
        try:
            block = cut_block(get_layer(teacher, layer.name), width)
        except ValueError as why:
            log.debug("uniform slim: %s stays the teacher's (%s)", layer.name, why)
            continue
        replace_layer(model, layer.name, block)
    return model


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def least_squares_blocks(model: nn.Module, teacher: nn.Module, images: torch.Tensor, input_shape) -> dict:
    """lana's least-squares start for every cut block of ``model``, in place, fitted as the
    library's slim candidates are: on the teacher's own activations at the block's input for
    ``images`` (uint8, as the data sets hold them). Returns ``{layer: (nMSE before, after)}``."""
    from lana.candidates.lsq import least_squares_start
    from lana.data import to_model_input
    from lana.distill import capture_io
    from lana.layers import find_layers, get_layer
    from lana.train import model_norm

    teacher = teacher.cpu().eval()
    layers = [layer.name for layer in find_layers(teacher, tuple(input_shape))]
    names = [name for name in layers if _size(get_layer(model, name)) != _size(get_layer(teacher, name))]
    norm, inputs = model_norm(teacher), {name: [] for name in names}
    for start in range(0, len(images), 64):
        x = to_model_input(images[start : start + 64], **norm)
        for name, (x_in, _y) in capture_io(teacher, names, x).items():
            inputs[name].append(x_in.float())
    fits = {}
    for name in names:
        try:
            fit = least_squares_start(get_layer(model, name), get_layer(teacher, name), torch.cat(inputs[name]))
        except ValueError as why:
            log.debug("uniform slim: no least-squares start for %s (%s)", name, why)
            continue
        fits[name] = (fit.nmse_before, fit.nmse_after)
    return fits


def random_feasible_plans(problem, budget_ms: float, count: int = 20, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` random plans whose predicted latency meets ``budget_ms``.

    Each layer draws a candidate uniformly (among those with a finite score); while the plan is
    over budget, a random layer that has a faster candidate is moved to a random faster one. The
    repair only ever lowers latency, so it ends; an empty list means even the fastest plan misses.
    """
    rng = np.random.default_rng(seed)
    latency, scores = _costs(problem)
    fastest = problem.fixed_ms[problem.table] + sum(row[np.isfinite(s)].min() for row, s in zip(latency, scores))
    if fastest > budget_ms:
        return []
    plans = []
    for _ in range(count):
        choice = [int(rng.choice(np.flatnonzero(np.isfinite(s)))) for s in scores]
        while problem.predicted_latency_ms(choice) > budget_ms:
            faster = [np.flatnonzero((row < row[c]) & np.isfinite(s)) for row, s, c in zip(latency, scores, choice)]
            layer = int(rng.choice([l for l, f in enumerate(faster) if len(f)]))
            choice[layer] = int(rng.choice(faster[layer]))
        plans.append(tuple(choice))
    return plans
