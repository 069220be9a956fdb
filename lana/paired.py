"""A model's latency relative to a reference (the teacher, or another student), timed paired.

A budget is a share of the teacher's latency, so what lana must measure is a ratio. On a shared
machine the speed moves in bursts of a second or two: on the 2-core AMD EPYC VM one forward pass of
W2's teacher took 136 ms for 14 calls in a row, then 80-90 ms, with the machine otherwise idle. A
pass that times each model for a few seconds in turn (:func:`lana.meters.measure_against_teacher`,
interleaved rounds) divides two medians taken seconds apart, and W2's final pass (1f71e5e) put the
teacher at 92.3 ms with an interquartile range of 23.9 ms, lana's students at 0.76-0.88 of budgets
that its own passes had put them at 0.97-0.99 of, and the selection kept one of four plans
predicted alike because its pass happened to time it 11% slower than the others.

Here each model alternates with the reference in short blocks (one untimed call, then ``repeats``
timed ones, the order flipped every block), so a burst hits both sides of a block; the ratio is the
median of the blocks' ratios, with its distribution-free 95% interval (order statistics of the
median). Blocks are added until the interval's half-width is under ``precision`` of the ratio or
``max_blocks`` were timed; several pairs take their blocks in turn (:func:`time_pairs`). On the same
VM, four passes of up to 60 blocks put lana's 0.5x student at 0.415, 0.475, 0.473 and 0.482 of its
teacher, where the two medians of interleaved rounds put it at 0.356-0.488
(``bench/results/checks/paired_timing_W2.json``, ``python3 -m bench.paired_check``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace

__all__ = ["Relative", "band_rank", "median_interval", "time_pairs", "time_relative"]


@dataclass(frozen=True)
class Relative:
    """One model timed paired with the reference.

    Attributes:
        ratio: median over blocks of (model's block median / reference's block median).
        low, high: the 95% interval of that median (order statistics; ``low == high == ratio``
            below 6 blocks, where none exists).
        blocks: blocks timed.
        model_ms, reference_ms: medians of each side's block medians, as timed (raw ms).
    """

    ratio: float
    low: float
    high: float
    blocks: int
    model_ms: float
    reference_ms: float

    @classmethod
    def of(cls, ratios: list[float], model_ms: list[float], reference_ms: list[float]) -> Relative:
        """Summarise the blocks' ratios and each side's block medians."""
        ratio, low, high = median_interval(ratios)
        return cls(ratio, low, high, len(ratios), statistics.median(model_ms), statistics.median(reference_ms))

    @property
    def half_width(self) -> float:
        """Half the interval's width, as a share of the ratio."""
        return (self.high - self.low) / 2 / self.ratio

    def on_scale(self, reference_ms: float | None) -> float:
        """The model's latency on a scale where the reference takes ``reference_ms`` (the library's
        scale, with the teacher's predicted latency); the raw median when ``reference_ms`` is None."""
        return self.ratio * reference_ms if reference_ms else self.model_ms

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "blocks": self.blocks,
                "model_ms": self.model_ms, "reference_ms": self.reference_ms}  # fmt: skip


def band_rank(ratio: float, band: tuple[float, float]) -> tuple[bool, float]:
    """How well ``ratio`` (a latency over its budget) lands in ``band`` (``(low, high)``), as a
    sortable key: inside first, then nearer the band's middle. The competitors' latency match
    ranks its steps and its tries after training by it, lana's check after fine-tuning its students."""
    low, high = band
    return low <= ratio <= high, -abs(ratio - (low + high) / 2)


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float, float]:
    """``(median, low, high)``: the median and its distribution-free ``z`` interval, from the order
    statistics at ``n/2 -+ z sqrt(n)/2`` (the binomial(n, 1/2) normal approximation); below 6
    values the interval is the median itself."""
    ordered = sorted(values)
    n = len(ordered)
    median = statistics.median(ordered)
    if n < 6:
        return median, median, median
    spread = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - spread))
    high = min(n - 1, math.ceil(n / 2 + spread) - 1)
    return median, ordered[low], ordered[high]


def time_relative(models: dict, reference, input_shape, table: str, threads: int | None = None,
                  **options) -> dict[str, Relative]:  # fmt: skip
    """Each of ``models`` timed paired with ``reference`` on ``table``'s target:
    :func:`time_pairs` with the same reference for every model (``options``: its keywords)."""
    return time_pairs({name: (model, reference) for name, model in models.items()}, input_shape, table,
                      threads=threads, **options)  # fmt: skip


def time_pairs(pairs: dict, input_shape, table: str, threads: int | None = None, *, blocks: int = 20,
               max_blocks: int = 60, precision: float = 0.01, repeats: int = 3) -> dict[str, Relative]:  # fmt: skip
    """Each pair ``name: (model, reference)`` timed paired on ``table``'s target (in shipped form,
    :func:`lana.candidates.inference_form`, as the library's tables are).

    The pairs take their blocks in turn (one block of each, then the next of each), so that every
    ratio spans the same minutes: on the AMD EPYC VM a student's ratio to its teacher moved from
    0.415 in one 30-second pass to 0.473-0.482 in the next three
    (``bench/results/checks/paired_timing_W2.json``), a change of the machine's state that pairing
    within a block does not cancel, and that would otherwise fall on whichever model was timed then.

    Args:
        blocks: blocks per pair at first (each: the model, then the reference, or the reverse).
        max_blocks: blocks per pair at most; while a pair's interval is wider than ``precision`` (a
            share of its ratio) either side, it takes ``blocks`` more.
        repeats: timed calls per side of a block, after one untimed call.

    Returns:
        ``{name: Relative}``.

    Raises:
        ValueError: ``blocks`` or ``repeats`` under 1, or ``max_blocks`` under ``blocks``.
    """
    from lana.candidates import inference_form
    from lana.meters import meter_for_table

    if blocks < 1 or repeats < 1 or max_blocks < blocks:
        raise ValueError(f"need blocks >= 1, repeats >= 1 and max_blocks >= blocks; got {blocks}, {repeats}, "
                         f"{max_blocks}")  # fmt: skip
    meter = replace(meter_for_table(table, threads=threads), repeats=repeats, warmup=1)
    shipped: dict[int, object] = {}  # one inference form per module, however many pairs share it

    def ship(module):
        if id(module) not in shipped:
            shipped[id(module)] = inference_form(module)
        return shipped[id(module)]

    pairs = {name: (ship(model), ship(reference)) for name, (model, reference) in pairs.items()}
    timed = {name: ([], [], []) for name in pairs}  # ratios, model's block medians, reference's
    open_pairs = list(pairs)
    while open_pairs:  # the open pairs have taken as many blocks as each other
        for _ in range(min(blocks, max_blocks - len(timed[open_pairs[0]][0]))):
            for name in open_pairs:
                model, reference = pairs[name]
                ratios, mine, theirs = timed[name]
                model_first = len(ratios) % 2 == 0  # flip the order: neither side always runs first
                a = meter(model if model_first else reference, input_shape).median_ms
                b = meter(reference if model_first else model, input_shape).median_ms
                m, r = (a, b) if model_first else (b, a)
                ratios.append(m / r)
                mine.append(m)
                theirs.append(r)
        found = {name: Relative.of(*timed[name]) for name in open_pairs}
        open_pairs = [n for n in open_pairs if found[n].half_width > precision and found[n].blocks < max_blocks]
    return {name: Relative.of(*sides) for name, sides in timed.items()}
