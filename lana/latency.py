"""Latency tables: how long each candidate takes on the target (LANA step 3, the time half).

A model's predicted latency is linear, ``fixed_ms + sum of one candidate's latency per layer``,
because the ILP needs it so. The numbers are made honest by *where* and *when* they are measured:

* With an eager backend (torch on CPU or CUDA) every candidate is timed *inside the network*:
  each layer is wrapped in a tiny timer and the network runs as random students, rotated so that
  every candidate runs in every round. A candidate's time then includes the cold caches and
  thread wake-ups it meets in a real forward, and ``fixed_ms`` is, call by call, the whole
  forward minus its blocks: stem, head, glue and per-call overhead. The random students are also
  timed whole, and one factor (median forward / predicted, ~1 on a quiet machine) is folded into
  every number: it puts back the interruptions that whole forwards suffer under load and block
  medians leave out. Timing blocks one at a time and timing stem and head alone instead left the
  plain sum ~20% under the real time at batch 1 on a busy 2-core CPU (see
  ``bench/latency_additivity.py``).
* A backend that runs a compiled graph (ONNX Runtime) cannot time a block inside it, so each
  candidate is timed alone at its layer's input shape, and ``fixed_ms`` is the teacher timed end to
  end minus the sum of its blocks timed alone, which absorbs per-call overhead.

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
            before and after), and for ``in_network`` the ``scale`` folded into every number
            and ``students_max_error_pct``, the worst error on the students timed whole in the
            same rounds (from ~4 samples each, so noisy).
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


def _in_network_round(teacher, layers, candidates, meter, input_shape, rounds, rng):
    """``run_round`` timing each candidate inside random students (items: (layer, candidate),
    ``fixed`` = each forward minus its blocks, ``teacher`` = the plain teacher end to end, and
    ``("student", choices)`` = each student's whole forwards)."""
    teacher, network = copy.deepcopy(teacher), copy.deepcopy(teacher)  # the meter moves them
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
        return samples

    return run_round


def _isolated_round(teacher, layers, candidates, meter, input_shape, rounds, rng):
    """``run_round`` timing each candidate alone at its layer's input, and the teacher.

    TODO(limit): a block timed alone keeps its weights in cache between repeats; inside the
    network they are evicted by the other blocks' (resnet18 holds 45 MB). With ONNX Runtime at
    batch 1 this put the teacher's blocks ~15% under their share of the teacher, the difference
    went into ``fixed_ms``, and students 5x cheaper than the teacher came out 2x over (one busy
    run). Timing the blocks as a chain of per-block sessions would cycle the cache as the
    network does.
    """
    teacher = copy.deepcopy(teacher)  # the meter moves what it times to its device

    def run_round(first: bool) -> dict:
        round_meter = _round_meter(meter, rounds, first)
        samples = {}
        for i, (layer, row) in enumerate(zip(layers, candidates)):
            for c in rng.permutation(len(row)):
                samples[i, int(c)] = list(round_meter(row[c], layer.in_shape).samples_ms)
        samples["teacher"] = list(round_meter(teacher, input_shape).samples_ms)
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


def _timing_method(method: str | None, meter: LatencyMeter, specs_per_layer) -> tuple[str, list[int | None]]:
    """The timing method (checked against the meter) and each layer's index of ``teacher``."""
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

    Returns:
        The :class:`LatencyTable`.
    """
    method, teacher_index = _timing_method(method, meter, specs_per_layer)
    load_before = os.getloadavg()[0]
    candidates = _build_candidates(teacher, layers, specs_per_layer, build)
    make_round = _in_network_round if method == "in_network" else _isolated_round
    run_round = make_round(teacher, layers, candidates, meter, tuple(input_shape), rounds,
                           np.random.default_rng(seed))  # fmt: skip
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
    if method == "in_network":  # per-table correction, folded into the numbers (stays linear)
        scale, diagnostics = _in_network_scale(samples, latency, fixed_ms, teacher_index)
        latency, spread = [row * scale for row in latency], [row * scale for row in spread]
        fixed_ms, fixed_spread_ms = fixed_ms * scale, fixed_spread_ms * scale
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
