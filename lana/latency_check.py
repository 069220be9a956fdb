"""Is a latency table honest? Predicted vs measured end-to-end latency of real models.

``lana latency LIB.h5 --check`` times the teacher and a few random students (the teacher with
the chosen candidates swapped in) end to end, interleaved round by round so that a drifting
machine load hits every model alike, and compares each median with the table's prediction
``fixed_ms + sum of the chosen candidates' latencies``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lana.latency import (
    LatencyMeter,
    LatencyTable,
    Timing,
    _progress,
    _quiet_rounds,
    _replace,
    _round_meter,
    predict_ms,
)

__all__ = ["CheckRow", "CheckReport", "check_latency", "errors_vs_teacher", "random_choices", "teacher_choices"]


def errors_vs_teacher(predicted, measured) -> np.ndarray:
    """Each student's % error against the teacher's, both timed together (index 0 is the teacher):
    ``(predicted / measured) / (the teacher's predicted / measured) - 1``. An ``x`` budget depends
    on this, and the machine's drift since the table (one factor for every model) leaves it."""
    ratio = np.asarray(predicted, dtype=np.float64) / np.asarray(measured, dtype=np.float64)
    return 100.0 * (ratio[1:] / ratio[0] - 1.0)


@dataclass(frozen=True)
class CheckRow:
    """One model of a latency check.

    Attributes:
        name: ``teacher`` or ``student_01``, ``student_02``, ...
        choices: the candidate index taken at each layer.
        predicted_ms: the table's prediction.
        measured_ms: median of the end-to-end timings.
        spread_ms: their interquartile range.
    """

    name: str
    choices: tuple[int, ...]
    predicted_ms: float
    measured_ms: float
    spread_ms: float

    @property
    def error_pct(self) -> float:
        """Signed error of the prediction, in % of the measured latency."""
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass(frozen=True)
class CheckReport:
    """Predicted vs measured latency of the teacher and some students on one table.

    ``quiet`` is False when the machine's load kept changing during the check: fewer than the
    asked-for rounds ran within tolerance of the quietest one, so the measured numbers carry that
    load. ``drift_pct`` compares the teacher now with the teacher when the table was measured.
    """

    table: str
    batch_size: int
    rows: tuple[CheckRow, ...]
    table_teacher_ms: float = float("nan")
    rounds_run: int = 0
    quiet: bool = True

    @property
    def drift_pct(self) -> float:
        """The teacher re-timed now vs when the table was measured, in %: how much the machine's
        state (load, clocks) moved in between; it adds to every model's error."""
        return 100.0 * (self.rows[0].measured_ms / self.table_teacher_ms - 1.0)

    @property
    def median_abs_error_pct(self) -> float:
        """Median over the models of the absolute % error."""
        return float(np.median([abs(row.error_pct) for row in self.rows]))

    @property
    def max_abs_error_pct(self) -> float:
        """Largest absolute % error over the models."""
        return float(max(abs(row.error_pct) for row in self.rows))

    @property
    def relative_errors_pct(self) -> list[float]:
        """Each student's error against the teacher timed in this check (:func:`errors_vs_teacher`)."""
        return errors_vs_teacher([r.predicted_ms for r in self.rows], [r.measured_ms for r in self.rows]).tolist()

    def to_text(self) -> str:
        """A table of the models, then a one-line summary as the last line."""
        lines = [f"{'model':<12} {'predicted ms':>12} {'measured ms':>12} {'iqr ms':>8} {'error':>8}"]
        for row in self.rows:
            lines.append(
                f"{row.name:<12} {row.predicted_ms:>12.3f} {row.measured_ms:>12.3f} "
                f"{row.spread_ms:>8.3f} {row.error_pct:>+7.1f}%"
            )
        lines.append(
            f"latency check {self.table} (batch {self.batch_size}): {len(self.rows)} models, "
            f"median |error| {self.median_abs_error_pct:.1f}%, max {self.max_abs_error_pct:.1f}%; "
            f"teacher {self.drift_pct:+.1f}% vs the table's"
            + (
                f"; against the teacher: median |error| {np.median(np.abs(relative)):.1f}%, "
                f"max {np.max(np.abs(relative)):.1f}%"
                if (relative := self.relative_errors_pct)
                else ""
            )
            + ("" if self.quiet else f"; machine busy: load changed over {self.rounds_run} rounds")
        )
        return "\n".join(lines)


def teacher_choices(table: LatencyTable) -> list[int]:
    """The index of ``teacher`` in every layer of the table."""
    try:
        return [specs.index("teacher") for specs in table.specs]
    except ValueError:
        raise ValueError(f"table {table.name!r} lacks the 'teacher' candidate in some layer") from None


def random_choices(table: LatencyTable, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` random students: a uniformly random candidate at every layer."""
    rng = np.random.default_rng(seed)
    return [[int(rng.integers(len(row))) for row in table.latency_ms] for _ in range(count)]


def _indices(table: LatencyTable, layers: Sequence, plan) -> list[int]:
    """A plan's choices as indices: ints, specs per layer, or a {layer name: spec} mapping."""
    if isinstance(plan, Mapping):
        plan = [plan.get(layer.name, "teacher") for layer in layers]
    if len(plan) != len(table.latency_ms):
        raise ValueError(f"a plan of {len(plan)} choices for a table of {len(table.latency_ms)} layers")
    return [int(c) if isinstance(c, (int, np.integer)) else specs.index(c)
            for c, specs in zip(plan, table.specs)]  # fmt: skip


def _assemble(teacher, layers, table, choices, build) -> nn.Module:
    """The teacher with candidate ``choices[l]`` swapped in at every layer that changes."""
    model = copy.deepcopy(teacher)
    for index, (layer, c) in enumerate(zip(layers, choices)):
        spec = table.specs[index][c]
        if spec != "teacher":
            _replace(model, layer.name, build(index, spec))
    return model


def check_latency(
    teacher: nn.Module,
    table: LatencyTable,
    layers: Sequence,
    plans: Sequence,
    build: Callable[[int, str], nn.Module],
    meter: LatencyMeter,
    *,
    input_shape: Sequence[int],
    rounds: int = 5,
    max_rounds: int | None = None,
    tolerance: float = 0.25,
    progress: bool = False,
) -> CheckReport:
    """Time the teacher and each planned student end to end and compare with the table.

    Args:
        teacher: the teacher network (left unchanged).
        table: the latency table whose predictions are checked (its ``specs`` name the choices).
        layers: the replaceable layers, in the table's order.
        plans: the students; each is a list with one choice per layer (an index into the table's
            specs, or the spec itself) or a ``{layer name: spec}`` mapping (missing: teacher).
        build: ``build(layer_index, spec) -> nn.Module``, as for ``measure_table``.
        meter: the target; it should match the table's device, backend and batch size.
        input_shape: the network's input ``(C, H, W)``.
        rounds: passes over all models that are kept; ``meter.repeats`` samples per model are
            spread over them.
        max_rounds, tolerance: passes are run until ``rounds`` of them ran within ``tolerance``
            of the quietest (at most ``max_rounds``, default 2 x rounds), as in ``measure_table``.
        progress: show a progress bar.

    Returns:
        The :class:`CheckReport`; the teacher is its first row.
    """
    target = (torch.device(meter.device).type, meter.backend, meter.batch_size)
    if target != (torch.device(table.device).type, table.backend, table.batch_size):
        raise ValueError(
            f"meter ({meter.device}, {meter.backend}, batch {meter.batch_size}) does not match "
            f"table {table.name!r} ({table.device}, {table.backend}, batch {table.batch_size})"
        )
    all_choices = [teacher_choices(table)] + [_indices(table, layers, plan) for plan in plans]
    names = ["teacher"] + [f"student_{i:02d}" for i in range(1, len(plans) + 1)]
    models = [_assemble(teacher, layers, table, choices, build) for choices in all_choices]
    rng = np.random.default_rng(0)

    def run_round(first: bool) -> dict:
        round_meter = _round_meter(meter, rounds, first)
        return {int(m): list(round_meter(models[m], input_shape).samples_ms)
                for m in rng.permutation(len(models))}  # fmt: skip

    with _progress(rounds, progress, f"check {table.name}") as bar:
        samples, quiet = _quiet_rounds(run_round, rounds, max_rounds or 2 * rounds, tolerance, bar)
    rows = []
    for m, (name, choices) in enumerate(zip(names, all_choices)):
        timing = Timing.of(samples[m])
        rows.append(CheckRow(name, tuple(choices), predict_ms(table, choices),
                             timing.median_ms, timing.spread_ms))  # fmt: skip
    return CheckReport(table.name, table.batch_size, tuple(rows), table.teacher_ms,
                       quiet["rounds_run"], quiet["max_round_load"] <= 1 + tolerance)  # fmt: skip
