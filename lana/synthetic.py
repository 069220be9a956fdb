"""Random but plausible libraries, for the solver's tests and benchmarks (torch-free, no weights).

The file follows the library layout of ARCHITECTURE.md exactly, so everything that reads a library
(`lana.problem.load_problem`, ``lana solve``, ``lana info``) can run on it without building one.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

__all__ = ["write_random_library", "spec_pool"]

_WIDTHS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def spec_pool() -> list[str]:
    """Distinct plausible specs: ``teacher``, ``id``, then ir/dw/conv/basic variants (541)."""
    specs = ["teacher", "id"]
    for k, e, w, se in itertools.product((3, 5, 7, 1), (1, 2, 3, 4, 6, 1.5, 2.5, 5), _WIDTHS, ("", "_se")):
        specs.append(f"ir_k{k}_e{e:g}_w{w:g}{se}")
    for k, w, se in itertools.product((3, 5, 7, 9), _WIDTHS, ("", "_se")):
        specs.append(f"dw_k{k}_w{w:g}{se}")
    specs += [f"conv_k{k}_w{w:g}" for k, w in itertools.product((3, 1, 5, 7), _WIDTHS)]
    specs += [f"basic_w{w:g}" for w in _WIDTHS]
    return specs


def write_random_library(
    path,
    n_layers: int,
    n_candidates: int,
    seed: int = 0,
    tables: tuple[str, ...] = ("cpu-b1",),
    score_kinds: tuple[str, ...] = ("top1_drop", "ce_delta", "kl"),
) -> Path:
    """Writes a complete library of random candidates (no weights).

    Every layer has ``teacher`` (score 0) and, with two or more candidates, ``id``. The others
    trade speed for accuracy: a candidate with relative cost r (in 0.05..1.3 of the teacher) gets
    latency ~ r^0.8, params and MACs ~ r, and a predicted drop ~ (1.1 - r)^2 times the layer's
    sensitivity, each with log-normal noise, so the per-layer fronts are neither trivial nor empty.

    Args:
        path: the .h5 file to write (replaced if present).
        n_layers: number of layers.
        n_candidates: candidates per layer, ``teacher`` included (at most ``len(spec_pool())``).
        seed: seed of numpy's default_rng; the same seed gives the same file content.
        tables: latency table names; the first is the reference, the others are scaled and noisy.
        score_kinds: score datasets to write.

    Returns:
        The path written.
    """
    from lana import __version__
    from lana.library import write_library

    pool = spec_pool()
    if not 1 <= n_candidates <= len(pool):
        raise ValueError(f"n_candidates must be in 1..{len(pool)}, got {n_candidates}")
    rng = np.random.default_rng(seed)
    table_scale = {t: 1.0 if i == 0 else float(rng.uniform(0.2, 3.0)) for i, t in enumerate(tables)}
    records, teacher_sum = [], {t: 0.0 for t in tables}
    for l in range(n_layers):
        record, teacher_lat = _random_layer(l, pool, n_candidates, rng, table_scale, score_kinds)
        records.append(record)
        for t in tables:
            teacher_sum[t] += teacher_lat[t]
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    table_attrs = []
    for t in tables:
        fixed_ms = 0.1 * teacher_sum[t]  # the unreplaced stem and head: about a tenth of the network
        table_attrs.append({
            "name": t, "device": "synthetic", "backend": "synthetic", "batch_size": 1, "threads": 1,
            "fingerprint": {"synthetic": True}, "fixed_ms": fixed_ms, "fixed_spread_ms": 0.01 * fixed_ms,
            "teacher_ms": 1.03 * (fixed_ms + teacher_sum[t]), "created": created,
        })  # fmt: skip
    teacher = {"model": "synthetic", "num_classes": 1000, "img_size": 224, "in_chans": 3, "checkpoint": None,
               "checkpoint_sha256": None, "pretrained": False}  # fmt: skip
    synthetic = {"n_layers": n_layers, "n_candidates": n_candidates, "seed": seed, "tables": list(tables),
                 "score_kinds": list(score_kinds)}  # fmt: skip
    meta = {"lana_version": __version__, "teacher": teacher, "config": {"synthetic": synthetic},
            "stages": {"distill": True, "score": True}}  # fmt: skip
    return write_library(path, meta, records, tables=table_attrs, complete=True)


def _random_layer(l: int, pool, n_candidates: int, rng, table_scale, score_kinds):
    """One random layer's record, and the teacher's latency on each table."""
    from lana.library import LayerRecord

    chosen = sorted(rng.choice(np.arange(2, len(pool)), size=max(n_candidates - 2, 0), replace=False))
    specs = ["teacher", "id"][:n_candidates] + [pool[i] for i in chosen]
    n = len(specs)
    channels = int(2 ** rng.integers(5, 10))
    side = int(2 ** rng.integers(2, 7))
    stride = 1 if rng.random() < 0.8 else 2
    teacher_ms = float(rng.lognormal(math.log(0.15), 0.6))
    teacher_params = int(9 * channels * channels * rng.uniform(0.5, 2.0))
    teacher_macs = teacher_params * (side // stride) ** 2
    sensitivity = float(rng.lognormal(math.log(0.3), 0.8))  # top-1 points lost by a bad swap

    cost = rng.uniform(0.05, 1.3, n)  # relative compute of each candidate
    cost[0] = 1.0
    if n > 1:
        cost[1] = 0.02  # id: almost free, and usually costly in accuracy
    noise = rng.lognormal(0.0, 0.2, n)
    noise[0] = 1.0
    top1 = sensitivity * np.maximum(1.1 - cost, 0.02) ** 2 * rng.lognormal(0.0, 0.5, n)
    top1 += rng.normal(0.0, 0.01, n)
    top1[0] = 0.0
    if n > 1:
        top1[1] = 1.5 * sensitivity
    # top-1 is noisy (it can come out negative); CE and KL always grow a little off the teacher
    floor = np.maximum(top1, 0.0) + 0.02 * sensitivity
    score = {
        "top1_drop": top1,
        "ce_delta": floor * 0.015 * rng.lognormal(0.0, 0.2, n),
        "kl": floor * 0.01 * rng.lognormal(0.0, 0.3, n),
    }

    distill_loss = rng.uniform(0.01, 0.5, n)
    distill_loss[0] = 0.0
    scores = {}
    for kind in score_kinds:
        values = score[kind] if kind in score else floor * rng.lognormal(0.0, 0.3, n)
        values = np.array(values, dtype=np.float64)
        values[0] = 0.0
        scores[kind] = values
    base = teacher_ms * cost**0.8 * rng.lognormal(0.0, 0.15, n)
    base[0] = teacher_ms
    latency = {}
    for i, (t, scale) in enumerate(table_scale.items()):
        # other devices rank candidates differently: independent noise on every table but the first
        latency[t] = scale * base * (rng.lognormal(0.0, 0.25, n) if i else 1.0)
    record = LayerRecord(
        name=f"blocks.{l // 4}.{l % 4}", kind="block", in_shape=(channels, side, side),
        out_shape=(channels, side // stride, side // stride), stride=stride, params=teacher_params,
        macs=teacher_macs, specs=list(specs),
        cand_params=np.rint(teacher_params * cost * noise).astype(np.int64),
        cand_macs=np.rint(teacher_macs * cost * noise).astype(np.int64),
        distill_loss=distill_loss, scores=scores, latency=latency,
        latency_spread={t: 0.05 * v for t, v in latency.items()},
    )  # fmt: skip
    return record, {t: float(v[0]) for t, v in latency.items()}
