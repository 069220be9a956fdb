"""Latency tables: how long each candidate takes on the target (LANA step 3, the time half).

A model's predicted latency is linear, ``fixed_ms + sum of one candidate's latency per layer``,
because the ILP needs it so. The numbers are made honest by *where* and *when* they are measured:

* With an eager backend (torch on CPU or CUDA) every candidate is timed *inside the network*:
  each layer is wrapped in a tiny timer and the network runs as random students, rotated so that
  every candidate runs in every round. A candidate's time then includes the cold caches and
  thread wake-ups it meets in a real forward. The same students, and a few made of light or of
  heavy candidates, are also timed whole *without* the timers, as users run them, and the table
  keeps ``fixed_ms`` and each candidate's number from a least-squares fit on them: whole =
  fixed + factor x (its blocks) + a weight term (ms per MB of the blocks' weights, the cache
  pressure a block puts on the rest of the forward). Forward-minus-blocks, the fixed part the
  timers see, carries the timers' own calls and a stem and head run with the caches flushed by
  a large network: it put W1's fastest plans 10-22% over their time at batch 1 while random
  students were within 2%. Where the fit is not physical, one factor (median forward /
  predicted) is folded in instead. Timing blocks one at a time and timing stem and head alone
  instead left the plain sum ~20% under the real time at batch 1 on a busy 2-core CPU (see
  ``bench/latency_additivity.py``).
* A backend that runs a compiled graph (ONNX Runtime, OpenVINO) cannot time a block inside it, so
  each candidate is timed alone at its layer's input shape; the teacher and a few random, light
  and heavy students are timed whole, and the same whole-student fit sets ``fixed_ms`` and folds
  into the numbers (without it ``fixed_ms`` is the teacher minus its blocks alone, and light
  students came out 1.4-2.8x their time at batch 1).

Both ways interleave: every round visits all candidates before any is timed again, so slow drift
in the machine's load hits all alike. Bursts of load (other jobs) slow whole rounds, so rounds
continue until enough ran within a tolerance of the quietest, and the quietest are kept. Each
number is a median with its interquartile range. The end-to-end check of the predictions lives
in :mod:`lana.latency_check`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = [
    "Timing",
    "LatencyMeter",
    "TorchMeter",
    "CudaMeter",
    "OnnxRuntimeMeter",
    "make_meter",
    "fingerprint",
    "LatencyTable",
    "measure_table",
    "predict_ms",
    "weight_mb",
    "candidate_weights_mb",
    "BACKENDS",
]

from lana.meters import (  # noqa: F401  (re-exported: lana.latency is the public entry point)
    BACKENDS,
    CudaMeter,
    LatencyMeter,
    OnnxRuntimeMeter,
    Timing,
    TorchMeter,
    _all_cores,
    fingerprint,
    make_meter,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyTable:
    """Per-candidate latencies of one library on one target, and what they were measured on.

    A model's predicted latency is ``fixed_ms + sum(latency_ms[layer][choice])``
    (:func:`predict_ms`).

    Attributes:
        name: the table's tag, e.g. ``cpu-b64``.
        device, backend, batch_size, threads: the target.
        fingerprint: :func:`fingerprint` of the meter, plus how it was measured: ``method``
            (``in_network`` or ``isolated``), ``rounds``, ``repeats``, ``rounds_run`` and
            ``max_round_load`` (see ``_quiet_rounds``), ``loadavg`` (1-minute load average
            before and after), and the ``correction`` folded into the numbers (``whole_fit``: the
            fit's figures under ``whole_fit``; or ``scale``), ``raw_fixed_ms`` (forward minus
            blocks in network; the teacher minus its blocks alone, isolated), the ``scale`` and
            ``students_max_error_pct``, the worst error of the scale on the students timed with
            the timers (from ~4 samples each, so noisy); ``isolated`` with ``scale``: none.
        fixed_ms, fixed_spread_ms: median and interquartile range of everything outside the
            replaceable layers (stem, head, glue, per-call overhead).
        teacher_ms: the teacher timed end to end (median).
        latency_ms: per layer, a float64 array with the median ms of each candidate.
        spread_ms: per layer, the interquartile ranges.
        specs: per layer, the candidate specs the arrays are indexed by.
    """

    name: str
    device: str
    backend: str
    batch_size: int
    threads: int
    fingerprint: dict
    fixed_ms: float
    fixed_spread_ms: float
    teacher_ms: float
    latency_ms: list
    spread_ms: list
    specs: list = field(default_factory=list)
    noisy: bool = False  # the measurement stayed noisy after re-timing (fingerprint["noise"] says why)

    def attrs(self) -> dict:
        """The table's attributes as the library stores them (``name`` and the target's settings)."""
        return {
            "name": self.name, "device": self.device, "backend": self.backend, "batch_size": self.batch_size,
            "threads": self.threads, "fingerprint": self.fingerprint, "fixed_ms": self.fixed_ms,
            "fixed_spread_ms": self.fixed_spread_ms, "teacher_ms": self.teacher_ms, "noisy": self.noisy,
        }  # fmt: skip

    @classmethod
    def from_library(cls, library, name: str) -> LatencyTable:
        """A stored table (to check it, say); ``library`` is a path or a :class:`lana.library.Library`."""
        from lana.library import Library

        library = library if isinstance(library, Library) else Library(library)
        a, records = library.table(name), library.layers()
        return cls(
            name=name, device=a.get("device", ""), backend=a.get("backend", ""), batch_size=int(a["batch_size"]),
            threads=int(a.get("threads", 0) or 0), fingerprint=a.get("fingerprint", {}), fixed_ms=float(a["fixed_ms"]),
            fixed_spread_ms=float(a.get("fixed_spread_ms", 0.0)), teacher_ms=float(a["teacher_ms"]),
            latency_ms=[r.latency[name] for r in records], spread_ms=[r.latency_spread[name] for r in records],
            specs=[list(r.specs) for r in records], noisy=bool(a.get("noisy", False)),
        )  # fmt: skip


def predict_ms(table: LatencyTable, choices: Sequence[int]) -> float:
    """Predicted latency of the model taking candidate ``choices[l]`` at layer ``l``."""
    if len(choices) != len(table.latency_ms):
        raise ValueError(f"{len(choices)} choices for a table of {len(table.latency_ms)} layers")
    return float(table.fixed_ms + sum(row[c] for row, c in zip(table.latency_ms, choices)))


class _BlockTimer(nn.Module):
    """Wraps one layer of a network and records the time of each forward through it."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self._records: list = []

    def forward(self, x):
        if x.is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            y = self.block(x)
            end.record()
            self._records.append((start, end))
            return y
        start = time.perf_counter()
        y = self.block(x)
        self._records.append((time.perf_counter() - start) * 1e3)
        return y

    def take(self, count: int) -> np.ndarray:
        """The last ``count`` forward times in ms (the meter has synchronised); forget the rest."""
        records, self._records = self._records[len(self._records) - count :], []
        if records and isinstance(records[0], tuple):
            return np.array([start.elapsed_time(end) for start, end in records])
        return np.array(records, dtype=np.float64)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    from lana.layers import replace_layer

    replace_layer(model, name, module)


def _build_candidates(teacher, layers, specs_per_layer, build) -> list[list[nn.Module]]:
    """Every candidate module; ``teacher`` is a copy of the teacher's own block."""
    return [
        [copy.deepcopy(teacher.get_submodule(layer.name)) if spec == "teacher" else build(i, spec) for spec in specs]
        for i, (layer, specs) in enumerate(zip(layers, specs_per_layer))
    ]


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def _round_load(results: list[dict]) -> np.ndarray:
    """How slow each round ran: over the items of every round, the median of (the item's median
    in this round / in its quietest round)."""
    items = [item for item in results[0] if all(item in result for result in results)]
    medians = np.array([[np.median(result[item]) for item in items] for result in results])
    return np.median(medians / medians.min(axis=0), axis=1)


def _quiet_rounds(run_round, rounds: int, max_rounds: int, tolerance: float, bar):
    """Run rounds until ``rounds`` of them ran at the quietest load; merge the quietest ones.

    A shared machine has bursts of load lasting seconds to minutes (other jobs start and stop):
    a round caught in one is slower for every item in it. Each round is scored by how much slower
    than their quietest rounds its items ran (the median over items, so no single item's noise
    decides), rounds continue until ``rounds`` are within ``tolerance`` of the quietest (or
    ``max_rounds`` ran), and the ``rounds`` quietest are kept.

    Args:
        run_round: ``run_round(first: bool) -> {item: [samples]}``; items found in every round
            score the rounds.

    Returns:
        ({item: samples of the kept rounds}, {"rounds_run", "max_round_load"}).
    """
    results = []
    while True:
        results.append(run_round(not results))
        bar.update()
        if len(results) < rounds:
            continue
        load = _round_load(results)
        if np.sum(load <= (1 + tolerance) * load.min()) >= rounds or len(results) >= max_rounds:
            break
        bar.total += 1
    keep = np.sort(np.argsort(load, kind="stable")[:rounds])
    merged: dict = {}
    for r in keep:
        for item, samples in results[r].items():
            merged.setdefault(item, []).extend(samples)
    quietest = load.min()
    teacher_round_ms = [float(np.median(results[r]["teacher"])) for r in keep if results[r].get("teacher")]
    return merged, {
        "rounds_run": len(results),
        "max_round_load": float(load[keep].max() / quietest),
        "teacher_round_ms": teacher_round_ms,
    }


def _attempts(run_round, rounds: int, max_rounds: int, tolerance: float, bar, name: str, max_retimes: int):
    """Time the rounds; while the result is noisy (:func:`lana.noise.assess`), time them again
    (at most ``max_retimes`` more times) and keep the least noisy attempt.

    Returns:
        (samples, quiet-rounds info, noise record with every attempt's figures).
    """
    from lana.noise import CpuProbe, assess

    tried = []
    for attempt in range(1 + max_retimes):
        probe = CpuProbe.start()
        samples, quiet = _quiet_rounds(run_round, rounds, max_rounds, tolerance, bar)
        noise = assess(quiet.pop("teacher_round_ms"), probe.others_cores())
        tried.append((samples, quiet, noise))
        if not noise["noisy"]:
            break
        if attempt < max_retimes:
            log.warning("latency %s: noisy measurement (%s); timing it again", name, noise["reason"])
            bar.total += rounds
    samples, quiet, noise = min(tried, key=lambda t: (t[2]["noisy"], t[2]["others_cores"] or 0.0))
    noise = {**noise, "attempts": [{k: n[k] for k in ("others_cores", "teacher_drift_pct")} for _, _, n in tried]}
    if noise["noisy"]:
        log.warning("latency %s: still noisy after %d attempts (%s); stored with noisy=True", name, len(tried),
                    noise["reason"])  # fmt: skip
    return samples, quiet, noise


def _round_meter(meter: LatencyMeter, rounds: int, first: bool) -> LatencyMeter:
    """The meter for one call in a round: its repeats spread over the rounds; after the first
    round the modules are warm, so one warm-up call is enough."""
    repeats = max(1, math.ceil(meter.repeats / rounds))
    return dataclasses.replace(meter, repeats=repeats, warmup=meter.warmup if first else min(meter.warmup, 1))


def weight_mb(module: nn.Module) -> float:
    """The module's parameters and buffers in MB (what its forward reads from memory besides activations)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


# students timed whole a round for the whole-student fit: light or heavy ones, and (isolated
# rounds, which have no timed students to reuse) random ones
_SIZED_STUDENTS, _RANDOM_STUDENTS = 4, 6


def candidate_weights_mb(candidates) -> list[np.ndarray]:
    """Per layer, :func:`weight_mb` of every candidate module."""
    return [np.array([weight_mb(m) for m in row]) for row in candidates]


def _time_whole(plain, layers, candidates, choices, round_meter, input_shape, samples) -> None:
    """Time the student of ``choices`` whole, without timers, into ``samples["plain", choices]``:
    ``plain`` (a copy of the teacher) takes the very candidate modules at every layer."""
    for layer, row, c in zip(layers, candidates, choices):
        _replace(plain, layer.name, row[c])
    samples["plain", tuple(choices)] = list(round_meter(plain, input_shape).samples_ms)


def _sized_choices(mbytes: list[np.ndarray], rng, small: bool) -> list[int]:
    """A random student of small (or large) candidates: each layer's pick among its lighter (or
    heavier) half by weight, so the students timed whole span the sizes plans will have."""
    choices = []
    for row in mbytes:
        order = np.argsort(row, kind="stable")
        half = order[: max(1, len(row) // 2)] if small else order[len(row) // 2 :]
        choices.append(int(rng.choice(half)))
    return choices


def _in_network_round(teacher, layers, candidates, mbytes, meter, input_shape, rounds, rng, whole: bool = True):
    """``run_round`` timing each candidate inside random students (items: (layer, candidate),
    ``fixed`` = each forward minus its blocks, ``teacher`` = the plain teacher end to end,
    ``("student", choices)`` = each student's whole forwards with the timers in, and where
    ``whole``, ``("plain", choices)`` = the same students, and 4 more of light or heavy
    candidates, timed whole as users run them: no timers)."""
    teacher, network = copy.deepcopy(teacher), copy.deepcopy(teacher)  # the meter moves them
    plain = copy.deepcopy(teacher)
    timers = [_BlockTimer(nn.Identity()) for _ in layers]
    for layer, timer in zip(layers, timers):
        _replace(network, layer.name, timer)
    variants = max(len(row) for row in candidates)

    def run_round(first: bool) -> dict:
        round_meter = _round_meter(meter, rounds, first)
        samples = {(i, c): [] for i, row in enumerate(candidates) for c in range(len(row))}
        samples["fixed"] = []
        # every candidate of every layer runs at least once, next to random neighbours;
        # the plain teacher takes a random slot in the round
        orders = [rng.permutation(len(row)) for row in candidates]
        teacher_slot = int(rng.integers(variants + 1))
        students = []
        for variant in range(variants + 1):
            if variant == teacher_slot:
                samples["teacher"] = list(round_meter(teacher, input_shape).samples_ms)
                continue
            v = variant - (variant > teacher_slot)
            chosen = [int(order[v % len(order)]) for order in orders]
            for timer, row, c in zip(timers, candidates, chosen):
                timer.block = row[c]
            total = np.array(round_meter(network, input_shape).samples_ms)
            blocks = [timer.take(len(total)) for timer in timers]
            for i, (c, block) in enumerate(zip(chosen, blocks)):
                samples[i, c] += block.tolist()
            samples["fixed"] += (total - np.sum(blocks, axis=0)).tolist()
            samples["student", tuple(chosen)] = total.tolist()
            students.append(chosen)
        if whole:
            students += [_sized_choices(mbytes, rng, small=k % 2 == 0) for k in range(_SIZED_STUDENTS)]
            # plain, in a shuffled pass of their own: right after its timed twin a student finds
            # its weights in cache (at batch 1 that read ~5% fast), after another model it does not
            for k in rng.permutation(len(students)):
                _time_whole(plain, layers, candidates, students[k], round_meter, input_shape, samples)
        return samples

    return run_round


def _isolated_round(teacher, layers, candidates, mbytes, meter, input_shape, rounds, rng, whole: bool = True):
    """``run_round`` timing each candidate alone at its layer's input, the teacher, and where
    ``whole`` 6 random students plus 4 of light or heavy candidates whole (items
    ``("plain", choices)``), for the whole-student fit.

    Blocks timed alone keep their weights in cache between repeats; inside the network they are
    evicted by the other blocks' (resnet18 holds 45 MB), and each alone pays the runtime's per-call
    cost. With ONNX Runtime at batch 1 that put the fixed part (teacher minus its blocks) far off,
    and light students came out 1.4-2.8x their time (``bench/latency_additivity.py --backend
    onnxruntime``); the whole students let :func:`_whole_fit` put it right.
    """
    teacher, plain = copy.deepcopy(teacher), copy.deepcopy(teacher)  # the meter moves what it times
    students = _RANDOM_STUDENTS if whole else 0

    def run_round(first: bool) -> dict:
        round_meter = _round_meter(meter, rounds, first)
        samples = {}
        for i, (layer, row) in enumerate(zip(layers, candidates)):
            for c in rng.permutation(len(row)):
                samples[i, int(c)] = list(round_meter(row[c], layer.in_shape).samples_ms)
        samples["teacher"] = list(round_meter(teacher, input_shape).samples_ms)
        chosen = [[int(rng.integers(len(row))) for row in candidates] for _ in range(students)]
        chosen += [_sized_choices(mbytes, rng, small=k % 2 == 0) for k in range(_SIZED_STUDENTS if whole else 0)]
        for choices in chosen:
            _time_whole(plain, layers, candidates, choices, round_meter, input_shape, samples)
        return samples

    return run_round


def _whole_vs_parts(samples: dict, latency: list[np.ndarray], fixed_ms: float) -> np.ndarray:
    """For each student timed whole: its median forward / (fixed + its blocks' latencies).

    All 1 if latency were additive in medians. Under load they rise: block medians leave out
    the interruptions (preemption by other processes, thread wake-ups) that a whole forward,
    being longer, nearly always suffers some of. Interruptions cost time in proportion to the
    time spent, so the median ratio, folded into every number, puts them back: at batch 1 on the
    busy 2-core CPU it took the mean error from -6% to 0% (``bench/latency_additivity.py
    --paired``). It is ~1 on a quiet machine; the students are timed in the same rounds as the
    blocks, so the machine's drift does not enter.
    """
    return np.array([
        np.median(totals) / (fixed_ms + sum(row[c] for row, c in zip(latency, item[1])))
        for item, totals in samples.items()
        if isinstance(item, tuple) and item[0] == "student"
    ])  # fmt: skip


def _timing_method(
    method: str | None, meter: LatencyMeter, specs_per_layer, correction: str = "whole_fit"
) -> tuple[str, list[int | None]]:
    """The timing method (checked against the meter, the correction checked too) and each
    layer's index of ``teacher``."""
    if correction not in ("whole_fit", "scale"):
        raise ValueError(f"unknown correction {correction!r}: whole_fit or scale")
    method = method or ("in_network" if meter.eager else "isolated")
    if method not in ("in_network", "isolated"):
        raise ValueError(f"unknown timing method {method!r}: in_network or isolated")
    if method == "in_network" and not meter.eager:
        raise ValueError(f"the {meter.backend} meter cannot time blocks inside the network")
    teacher_index = [list(specs).index("teacher") if "teacher" in specs else None for specs in specs_per_layer]
    if method == "isolated" and None in teacher_index:
        raise ValueError("isolated timing needs the 'teacher' candidate in every layer's specs")
    return method, teacher_index


def _in_network_scale(samples: dict, latency, fixed_ms: float, teacher_index) -> tuple[float, dict]:
    """The factor that makes the parts' sum match the students (and teacher) timed whole."""
    if None not in teacher_index:  # the plain teacher is one more student timed whole
        samples.setdefault(("student", tuple(teacher_index)), []).extend(samples["teacher"])
    ratios = _whole_vs_parts(samples, latency, fixed_ms)
    scale = float(np.median(ratios))
    error = float(np.abs(ratios / scale - 1).max() * 100)
    return scale, {"scale": round(scale, 4), "students_max_error_pct": round(error, 2)}


# a fit is kept only where it is physical: block times count about once (the fixed part, after
# any negative intercept moved to the layers, is >= 0)
_BLOCK_FACTOR_RANGE = (0.5, 2.0)


def _whole_fit(samples: dict, latency, mbytes, teacher_index) -> dict | None:
    """Fit ``whole = fixed + factor x (sum of blocks) + ms_per_mb x (MB of the blocks' weights)``
    by least squares on the students timed whole without timers (and the plain teacher).

    Why: a block's time inside the timed network is right, but what lies around it is not. The
    fixed part measured as forward minus blocks carries the timers' own calls (~6 us each on this
    CPU) and the stem and head as they run after a large network has flushed the caches; in a
    small student they stay warm. At batch 1 that put W1's fastest plans 10-22% over their
    measured time while random students were within 2%. The fitted intercept is the fixed part as
    a real forward has it, and the weight term is the cache pressure a block puts on the rest.
    Both fold into the numbers, so the prediction stays one number per candidate.

    Returns:
        ``{"fixed_ms", "intercept_ms", "layer_shift_ms", "block_factor", "ms_per_mb", "students",
        "median_abs_error_pct", "max_abs_error_pct"}`` (a negative intercept moved from the
        layers' numbers, ``layer_shift_ms``, so the fixed part is >= 0), or None where there are
        too few students or the fit is not physical (then the per-table scale is used).
    """
    if None not in teacher_index:
        samples.setdefault(("plain", tuple(teacher_index)), []).extend(samples["teacher"])
    students = [(item[1], np.median(totals)) for item, totals in samples.items()
                if isinstance(item, tuple) and item[0] == "plain" and totals]  # fmt: skip
    if len(students) < 6:
        return None
    blocks = np.array([sum(row[c] for row, c in zip(latency, choices)) for choices, _ in students])
    weights = np.array([sum(row[c] for row, c in zip(mbytes, choices)) for choices, _ in students])
    whole = np.array([total for _, total in students])
    features = np.c_[np.ones(len(whole)), blocks, weights]
    if np.ptp(weights) < 1e-9:  # every student equally heavy: the weight term is not identifiable
        features = features[:, :2]
    coef = np.linalg.lstsq(features, whole, rcond=None)[0]
    if len(coef) > 2 and coef[2] < 0:  # cache pressure only adds time: a negative term is the
        features = features[:, :2]  # weights standing in for the blocks' time (batch 64); drop it
        coef = np.linalg.lstsq(features, whole, rcond=None)[0]
    fixed, factor, per_mb = float(coef[0]), float(coef[1]), float(coef[2]) if len(coef) > 2 else 0.0
    # a negative intercept is each block's own per-call cost counted once a layer (blocks timed
    # alone at batch 1 pay the runtime's call each): the same in every plan, so it moves from the
    # layers' numbers to the fixed part without changing any prediction, while they stay >= 0
    lowest = np.array([float(np.min(factor * row + per_mb * mb)) for row, mb in zip(latency, mbytes)])
    shift = np.zeros(len(lowest))
    if fixed < 0 and lowest.clip(min=0).sum() > -fixed:
        shift = -fixed * lowest.clip(min=0) / lowest.clip(min=0).sum()
    if fixed + shift.sum() < -1e-9 or not _BLOCK_FACTOR_RANGE[0] <= factor <= _BLOCK_FACTOR_RANGE[1]:
        log.warning("latency: whole-student fit not kept (fixed %.4f ms, block factor %.3f); scaling instead",
                    fixed, factor)  # fmt: skip
        return None
    error = np.abs(100 * (features @ coef / whole - 1))
    return {"fixed_ms": round(max(0.0, fixed + float(shift.sum())), 6), "intercept_ms": round(fixed, 6),
            "layer_shift_ms": [round(float(v), 6) for v in shift], "block_factor": round(factor, 5),
            "ms_per_mb": round(per_mb, 7), "students": len(students),
            "median_abs_error_pct": round(float(np.median(error)), 2), "max_abs_error_pct": round(float(error.max()), 2)}  # fmt: skip


def _fold_correction(samples, latency, spread, fixed_ms, fixed_spread_ms, mbytes, teacher_index, correction):
    """The numbers with the correction folded in: the whole-student fit where asked for and
    physical, else the per-table scale. Returns (latency, spread, fixed, fixed spread,
    diagnostics for the fingerprint)."""
    scale, diagnostics = _in_network_scale(samples, latency, fixed_ms, teacher_index)
    fit = _whole_fit(samples, latency, mbytes, teacher_index) if correction == "whole_fit" else None
    diagnostics["raw_fixed_ms"] = round(fixed_ms, 6)
    diagnostics["correction"] = "whole_fit" if fit is not None else "scale"
    if fit is None:
        return ([row * scale for row in latency], [row * scale for row in spread], fixed_ms * scale,
                fixed_spread_ms * scale, diagnostics)  # fmt: skip
    diagnostics["whole_fit"] = fit
    latency = [fit["block_factor"] * row + fit["ms_per_mb"] * mb - shift
               for row, mb, shift in zip(latency, mbytes, fit["layer_shift_ms"])]  # fmt: skip
    spread = [row * fit["block_factor"] for row in spread]
    return latency, spread, fit["fixed_ms"], fixed_spread_ms * fit["block_factor"], diagnostics


def measure_table(
    teacher: nn.Module,
    layers: Sequence,
    specs_per_layer: Sequence[Sequence[str]],
    build: Callable[[int, str], nn.Module],
    meter: LatencyMeter,
    name: str,
    progress: bool = True,
    *,
    input_shape: Sequence[int],
    rounds: int = 5,
    max_rounds: int | None = None,
    tolerance: float = 0.25,
    method: str | None = None,
    seed: int = 0,
    max_retimes: int = 0,
    correction: str = "whole_fit",
) -> LatencyTable:
    """Time every candidate of every layer, the fixed part and the teacher on one target.

    Args:
        teacher: the teacher network (left unchanged).
        layers: the replaceable layers (``lana.layers.Layer``: ``name``, ``in_shape``).
        specs_per_layer: per layer, the candidate specs to time (``teacher`` is the teacher's
            own block; needed in every layer by the ``isolated`` method).
        build: ``build(layer_index, spec) -> nn.Module``, the candidate (weights do not matter).
        meter: the target; ``meter.repeats`` samples per candidate are spread over the rounds.
        name: the table's tag, e.g. ``cpu-b64``.
        progress: show a progress bar.
        input_shape: the network's input ``(C, H, W)``.
        rounds: passes over all candidates that are kept; repeats within a pass are back to back.
        max_rounds: most passes run while looking for ``rounds`` quiet ones (default 2 x rounds).
        tolerance: a pass is quiet if it ran at most this much slower than the quietest one.
        method: ``in_network`` (eager meters' default: blocks timed inside random students) or
            ``isolated`` (each block alone; the only choice for compiled backends).
        seed: seeds the order of candidates within each round.
        max_retimes: times a noisy measurement is repeated (builds pass :data:`lana.noise.MAX_RETIMES`);
            a table still noisy after them is returned with ``noisy=True``.
        correction: what is folded into the numbers: ``whole_fit`` (default; :func:`_whole_fit`,
            the scale where it is not physical) or ``scale`` (one factor; ``isolated``: nothing).

    Returns:
        The :class:`LatencyTable`.
    """
    method, teacher_index = _timing_method(method, meter, specs_per_layer, correction)
    load_before = os.getloadavg()[0]
    candidates = _build_candidates(teacher, layers, specs_per_layer, build)
    mbytes = candidate_weights_mb(candidates)
    make_round = _in_network_round if method == "in_network" else _isolated_round
    run_round = make_round(teacher, layers, candidates, mbytes, meter, tuple(input_shape), rounds,
                           np.random.default_rng(seed), whole=correction == "whole_fit")  # fmt: skip
    with _progress(rounds, progress, f"latency {name}") as bar:
        samples, quiet, noise = _attempts(
            run_round, rounds, max_rounds or 2 * rounds, tolerance, bar, name, max_retimes
        )
    stats = [[Timing.of(samples[i, c]) for c in range(len(row))] for i, row in enumerate(candidates)]
    latency = [np.array([t.median_ms for t in row]) for row in stats]
    spread = [np.array([t.spread_ms for t in row]) for row in stats]
    teacher_timing = Timing.of(samples["teacher"])
    if method == "isolated":  # the rest of the teacher's forward, per-call overhead included
        teacher_blocks = sum(row[c] for row, c in zip(latency, teacher_index))
        samples["fixed"] = list(np.array(samples["teacher"]) - teacher_blocks)
    fixed_timing = Timing.of(samples["fixed"])
    fixed_ms, fixed_spread_ms, diagnostics = fixed_timing.median_ms, fixed_timing.spread_ms, {}
    if method == "in_network" or correction == "whole_fit":  # folded into the numbers (stays linear)
        latency, spread, fixed_ms, fixed_spread_ms, diagnostics = _fold_correction(
            samples, latency, spread, fixed_ms, fixed_spread_ms, mbytes, teacher_index, correction
        )
    predicted = fixed_ms + sum(row[c] for row, c in zip(latency, teacher_index)) if None not in teacher_index else None
    if predicted is not None:  # the teacher's own row against its measurement whole
        noise["teacher_error_pct"] = round(float(100 * (predicted / teacher_timing.median_ms - 1)), 2)
    how = {"method": method, "rounds": rounds, "repeats": meter.repeats, **diagnostics, **quiet, "noise": noise,
           "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip
    return LatencyTable(
        name=name, device=str(torch.device(meter.device)), backend=meter.backend, batch_size=meter.batch_size,
        threads=meter.threads or _all_cores(), fingerprint={**fingerprint(meter), **how}, fixed_ms=fixed_ms,
        fixed_spread_ms=fixed_spread_ms, teacher_ms=teacher_timing.median_ms, latency_ms=latency, spread_ms=spread,
        specs=[list(specs) for specs in specs_per_layer], noisy=noise["noisy"],
    )  # fmt: skip
