"""What ``lana info`` shows: a library as JSON-ready data, and as a human table. Torch-free."""

from __future__ import annotations

import os

import numpy as np

from lana.library.reader import Library

__all__ = ["format_info", "read_info"]


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def read_info(path: str | os.PathLike) -> dict:
    """The library as JSON-ready data (what ``lana info --json`` prints). Torch-free."""
    library = Library(path)
    root, records = library.attrs, library.layers()
    tables = [{"name": name, **attrs} for name, attrs in library.tables.items()]
    layers = []
    for r in records:
        cands = []
        for i, spec in enumerate(r.specs):
            cands.append(
                {
                    "spec": spec,
                    "params": int(r.cand_params[i]),
                    "macs": int(r.cand_macs[i]),
                    "distill_loss": _finite(r.distill_loss[i]),
                    "scores": {k: _finite(v[i]) for k, v in r.scores.items()},
                    "latency_ms": {k: _finite(v[i]) for k, v in r.latency.items()},
                }
            )
        layers.append(
            {
                "name": r.name,
                "kind": r.kind,
                "in_shape": list(r.in_shape),
                "out_shape": list(r.out_shape),
                "stride": r.stride,
                "params": r.params,
                "macs": r.macs,
                "candidates": cands,
            }
        )
    return {
        "path": str(library.path),
        "complete": bool(root.get("complete", False)),
        "format_version": root.get("format_version"),
        "lana_version": root.get("lana_version"),
        "teacher": root.get("teacher", {}),
        "config": root.get("config", {}),
        "stages": root.get("stages", {}),
        "default_score": library.default_score(),
        "calibrations": {
            k: {key: v for key, v in c.items() if key != "samples"} for k, c in library.calibrations.items()
        },
        "layers": layers,
        "latency_tables": tables,
    }


def _noise_text(table: dict) -> str:
    """``; NOISY (why)`` for a flagged table, the measured noise figures for a trusted one."""
    noise = (table.get("fingerprint") or {}).get("noise") or {}
    if table.get("noisy"):
        return f"; NOISY ({noise.get('reason') or 'unknown'}): re-time with `lana latency LIB --retime {table['name']}`"
    if not noise:
        return ""
    others = noise.get("others_cores")
    return f"; noise: others {'?' if others is None else f'{others:.2f}'} cores, drift {noise.get('teacher_drift_pct', 0):.1f}%"


def _teacher_predicted_ms(info: dict, table: dict) -> float | None:
    """The teacher's predicted latency on ``table`` (fixed part + its own blocks): what budgets in
    ``x`` multiply; None when a layer has no timed ``teacher`` candidate."""
    total = table.get("fixed_ms")
    for layer in info["layers"]:
        own = next((c for c in layer["candidates"] if c["spec"] == "teacher"), None)
        value = own["latency_ms"].get(table["name"]) if own else None
        if value is None or total is None:
            return None
        total += value
    return total


def format_info(info: dict) -> str:
    """A human table of :func:`read_info`'s data."""
    t = info["teacher"]
    lines = [
        f"library {info['path']}  ({'complete' if info['complete'] else 'INCOMPLETE'})",
        f"teacher {t.get('model')}  classes={t.get('num_classes')}  img_size={t.get('img_size')}  "
        f"space={info['config'].get('space')}  dataset={info['config'].get('dataset')}",
    ]
    for table in info["latency_tables"]:
        predicted = _teacher_predicted_ms(info, table)
        lines.append(
            f"latency table {table['name']}: {table.get('device')}/{table.get('backend')} batch {table.get('batch_size')}, "
            f"fixed {table.get('fixed_ms', float('nan')):.3f} ms, teacher "
            + (f"predicted {predicted:.3f} ms (what 1x means) / " if predicted is not None else "")
            + f"measured whole {table.get('teacher_ms', float('nan')):.3f} ms"
            + _noise_text(table)
        )
    for kind, made in (info.get("calibrations") or {}).items():
        lines.append(
            f"score {kind}: calibrated from {made.get('base')} on {made.get('samples')} whole students; Spearman on "
            f"{made.get('held_out')} held-out plans {made.get('spearman_one_swap', float('nan')):.3f} (one-swap sum) -> "
            f"{made.get('spearman_calibrated', float('nan')):.3f} (calibrated); the default score"
        )
    score = info.get("default_score") or "kl"
    table = info["latency_tables"][0]["name"] if info["latency_tables"] else None
    lines.append("")
    header = f"{'layer':<22} {'in -> out':<24} {'cands':>5}  {'best loss':>9} {'worst loss':>10}  {'best ' + score:>12}  {'fastest ms':>10}"
    lines += [header, "-" * len(header)]
    for layer in info["layers"]:
        losses = [
            c["distill_loss"] for c in layer["candidates"] if c["distill_loss"] is not None and c["spec"] != "teacher"
        ]
        scores = [
            c["scores"].get(score)
            for c in layer["candidates"]
            if c["scores"].get(score) is not None and c["spec"] != "teacher"
        ]
        times = [
            c["latency_ms"].get(table) for c in layer["candidates"] if table and c["latency_ms"].get(table) is not None
        ]
        shape = f"{'x'.join(map(str, layer['in_shape']))} -> {'x'.join(map(str, layer['out_shape']))}"
        fmt = lambda v, spec="9.4f": format(v, spec) if v is not None else "-"
        lines.append(
            f"{layer['name']:<22} {shape:<24} {len(layer['candidates']):>5}  {fmt(min(losses) if losses else None):>9} "
            f"{fmt(max(losses) if losses else None):>10}  {fmt(min(scores) if scores else None, '12.4f'):>12}  "
            f"{fmt(min(times) if times else None, '10.3f'):>10}"
        )
    return "\n".join(lines)
