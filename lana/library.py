"""The library: one HDF5 file with every candidate's weights, scores and latency tables.

The layout is documented in ARCHITECTURE.md. Nothing in it is a pickle: arrays, plus JSON in
attributes. Every write is atomic: a new file is written beside the old one and renamed over it,
so a killed process never leaves a half-written library behind.

The reading functions here (``read_info``, ``layer_records``) need only h5py and numpy, so that
``lana info`` starts without torch; loading weights back as modules imports torch lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerRecord",
    "LibraryError",
    "atomic_h5",
    "complete_config",
    "edit_library",
    "layer_records",
    "load_candidate",
    "load_library_teacher",
    "read_info",
    "write_library",
    "write_latency_table",
    "format_info",
]

FORMAT = "lana-library"
FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")


class LibraryError(ValueError):
    """A library file that is missing, of another format, or lacks what is asked for."""


@dataclass
class LayerRecord:
    """One layer of a library, as stored: shapes, specs and per-candidate arrays."""

    name: str
    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: int
    params: int
    macs: int
    specs: list[str]
    cand_params: np.ndarray
    cand_macs: np.ndarray
    distill_loss: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    latency: dict[str, np.ndarray] = field(default_factory=dict)
    latency_spread: dict[str, np.ndarray] = field(default_factory=dict)


@contextmanager
def atomic_h5(path: str | os.PathLike, copy_from: str | os.PathLike | None = None) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file for writing and rename it over ``path`` when the block succeeds.

    With ``copy_from``, the temporary file starts as a copy of that file (to edit a library).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if copy_from is not None:
        shutil.copyfile(copy_from, tmp)
    try:
        with h5py.File(tmp, "a" if copy_from is not None else "w") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def edit_library(path: str | os.PathLike):
    """Edit a library atomically: ``with edit_library(p) as f: ...`` (copy, edit, rename)."""
    path = Path(path)
    _check(path)
    return atomic_h5(path, copy_from=path)


def _json_attr(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check(path: Path) -> None:
    if not path.is_file():
        raise LibraryError(f"library {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            fmt = _text(f.attrs.get("format", ""))
    except OSError as error:
        raise LibraryError(f"{path} is not an HDF5 file ({error})") from error
    if fmt != FORMAT:
        raise LibraryError(f"{path} is not a lana library (format attribute {fmt!r}, expected {FORMAT!r})")


def write_library(
    path: str | os.PathLike,
    meta: dict,
    layers: list[LayerRecord],
    weights: dict[tuple[int, str], dict[str, np.ndarray]],
    teacher_state: dict[str, np.ndarray],
    tables: list[dict] = (),
    complete: bool = True,
) -> Path:
    """Write a whole library atomically.

    Args:
        meta: root attributes: ``teacher`` (dict), ``config`` (dict), ``stages`` (dict), ...
        layers: per layer its record (shapes, specs, per-candidate arrays).
        weights: ``(layer_index, spec) -> state dict`` as numpy arrays.
        teacher_state: the teacher's state dict, so the library alone rebuilds any student.
        tables: latency table attributes (``name``, device, backend, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_h5(path) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = bool(complete)
        f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for key, value in meta.items():
            f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else _json_attr(value)
        teacher = f.create_group("teacher_weights")
        for key, value in teacher_state.items():
            teacher.create_dataset(key, data=value)
        group = f.create_group("layers")
        for index, record in enumerate(layers):
            g = group.create_group(f"{index:03d}")
            g.attrs.update(
                name=record.name,
                kind=record.kind,
                in_shape=_json_attr(list(record.in_shape)),
                out_shape=_json_attr(list(record.out_shape)),
                stride=record.stride,
                params=record.params,
                macs=record.macs,
            )
            g.create_dataset("specs", data=np.array(record.specs, dtype=object), dtype=_STR)
            g.create_dataset("params", data=np.asarray(record.cand_params, dtype=np.int64))
            g.create_dataset("macs", data=np.asarray(record.cand_macs, dtype=np.int64))
            g.create_dataset("distill_loss", data=np.asarray(record.distill_loss, dtype=np.float64))
            for kind, values in record.scores.items():
                g.create_dataset(f"scores/{kind}", data=np.asarray(values, dtype=np.float64))
            for table, values in record.latency.items():
                g.create_dataset(f"latency/{table}", data=np.asarray(values, dtype=np.float64))
                g.create_dataset(
                    f"latency_spread/{table}", data=np.asarray(record.latency_spread[table], dtype=np.float64)
                )
            w = g.create_group("weights")
            for spec in record.specs:
                state = weights.get((index, spec))
                if state:
                    sg = w.create_group(spec)
                    for key, value in state.items():
                        sg.create_dataset(key, data=value)
        tg = f.create_group("latency_tables")
        for table in tables:
            _write_table_attrs(tg, table)
    return path


def _write_table_attrs(group: h5py.Group, table: dict) -> None:
    name = table["name"]
    if name in group:
        del group[name]
    g = group.create_group(name)
    for key, value in table.items():
        if key == "name":
            continue
        g.attrs[key] = value if isinstance(value, (str, int, float, bool)) else _json_attr(value)


def write_latency_table(path: str | os.PathLike, table: dict, latency_ms: list, spread_ms: list) -> None:
    """Add (or replace) a named latency table in an existing library, atomically.

    Args:
        table: attributes, with at least ``name``, ``device``, ``backend``, ``batch_size``,
            ``fixed_ms`` and ``teacher_ms``.
        latency_ms, spread_ms: per layer, one value per candidate, in the library's spec order.
    """
    name = table["name"]
    with edit_library(path) as f:
        layers = f["layers"]
        keys = sorted(layers)
        if len(keys) != len(latency_ms):
            raise LibraryError(f"table {name!r} has {len(latency_ms)} layers, the library {len(keys)}")
        for key, values, spread in zip(keys, latency_ms, spread_ms):
            g = layers[key]
            if len(values) != g["specs"].shape[0]:
                raise LibraryError(
                    f"table {name!r}: layer {g.attrs['name']} has {g['specs'].shape[0]} candidates, got {len(values)} times"
                )
            for sub, data in (("latency", values), ("latency_spread", spread)):
                if f"{sub}/{name}" in g:
                    del g[f"{sub}/{name}"]
                g.create_dataset(f"{sub}/{name}", data=np.asarray(data, dtype=np.float64))
        _write_table_attrs(
            f.require_group("latency_tables"), {**table, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        )
        stages = json.loads(_text(f.attrs.get("stages", "{}")))
        f.attrs["complete"] = bool(stages.get("distill") and stages.get("score"))


def complete_config(path: str | os.PathLike) -> dict | None:
    """The build configuration of a complete library at ``path``; None when it is missing,
    unreadable or incomplete (so the caller rebuilds it)."""
    try:
        with h5py.File(path, "r") as f:
            if not bool(f.attrs.get("complete", False)):
                return None
            return json.loads(f.attrs["config"])
    except (OSError, KeyError, json.JSONDecodeError):
        return None


def attr_value(value):
    """An HDF5 attribute as Python: text decoded, JSON strings parsed, numpy scalars unwrapped."""
    value = _text(value) if isinstance(value, (bytes, str)) else value
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def layer_records(f: h5py.File) -> list[LayerRecord]:
    """Every layer's record from an open library."""
    out = []
    for key in sorted(f["layers"]):
        g = f["layers"][key]
        a = {k: attr_value(v) for k, v in g.attrs.items()}
        out.append(
            LayerRecord(
                name=a["name"],
                kind=a["kind"],
                in_shape=tuple(a["in_shape"]),
                out_shape=tuple(a["out_shape"]),
                stride=int(a["stride"]),
                params=int(a["params"]),
                macs=int(a["macs"]),
                specs=[_text(s) for s in g["specs"][()]],
                cand_params=g["params"][()],
                cand_macs=g["macs"][()],
                distill_loss=g["distill_loss"][()],
                scores={k: v[()] for k, v in g.get("scores", {}).items()},
                latency={k: v[()] for k, v in g.get("latency", {}).items()},
                latency_spread={k: v[()] for k, v in g.get("latency_spread", {}).items()},
            )
        )
    return out


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def read_info(path: str | os.PathLike) -> dict:
    """The library as JSON-ready data (what ``lana info --json`` prints). Torch-free."""
    path = Path(path)
    _check(path)
    with h5py.File(path, "r") as f:
        root = {k: attr_value(v) for k, v in f.attrs.items()}
        records = layer_records(f)
        tables = [
            {"name": name, **{k: attr_value(v) for k, v in g.attrs.items()}}
            for name, g in f.get("latency_tables", {}).items()
        ]
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
        "path": str(path),
        "complete": bool(root.get("complete", False)),
        "format_version": root.get("format_version"),
        "lana_version": root.get("lana_version"),
        "teacher": root.get("teacher", {}),
        "config": root.get("config", {}),
        "stages": root.get("stages", {}),
        "default_score": root.get("default_score"),
        "layers": layers,
        "latency_tables": tables,
    }


def format_info(info: dict) -> str:
    """A human table of :func:`read_info`'s data."""
    t = info["teacher"]
    lines = [
        f"library {info['path']}  ({'complete' if info['complete'] else 'INCOMPLETE'})",
        f"teacher {t.get('model')}  classes={t.get('num_classes')}  img_size={t.get('img_size')}  "
        f"space={info['config'].get('space')}  dataset={info['config'].get('dataset')}",
    ]
    for table in info["latency_tables"]:
        lines.append(
            f"latency table {table['name']}: {table.get('device')}/{table.get('backend')} batch {table.get('batch_size')}, "
            f"fixed {table.get('fixed_ms', float('nan')):.3f} ms, teacher {table.get('teacher_ms', float('nan')):.3f} ms"
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


# ---- torch side: modules back from the library -------------------------------------------


def load_library_teacher(path: str | os.PathLike):
    """The teacher (eval mode) exactly as the library was built from it."""
    import torch

    from lana.teacher import create_model

    path = Path(path)
    _check(path)
    with h5py.File(path, "r") as f:
        teacher = attr_value(f.attrs["teacher"])
        state = {k: torch.from_numpy(np.asarray(v[()])) for k, v in f["teacher_weights"].items()}
    model = create_model(teacher["model"], teacher["num_classes"], in_chans=teacher.get("in_chans", 3))
    model.load_state_dict(state)
    return model.eval()


def _layer_group(f: h5py.File, layer: int | str) -> h5py.Group:
    keys = sorted(f["layers"])
    if isinstance(layer, int):
        return f["layers"][keys[layer]]
    for key in keys:
        if _text(f["layers"][key].attrs["name"]) == layer:
            return f["layers"][key]
    names = [_text(f["layers"][k].attrs["name"]) for k in keys]
    raise LibraryError(f"no layer {layer!r} in the library; layers are {', '.join(names)}")


def load_candidate(path: str | os.PathLike, layer: int | str, spec: str, teacher=None):
    """Rebuild one candidate with its distilled weights (eval mode).

    Args:
        layer: the layer's index or name.
        teacher: the library's teacher (for the ``teacher`` spec); loaded when needed.

    An int8 spec returns its distilled float parent quantized as the build did
    (:meth:`lana.context.LibraryContext.load`, calibrated on the build's training images).
    """
    import torch

    from lana.candidates import build_candidate, is_int8
    from lana.layers import Layer, get_layer

    path = Path(path)
    _check(path)
    with h5py.File(path, "r") as f:
        g = _layer_group(f, layer)
        specs = [_text(s) for s in g["specs"][()]]
        if spec not in specs:
            raise LibraryError(f"layer {_text(g.attrs['name'])} has no candidate {spec!r}; it has {', '.join(specs)}")
        a = {k: attr_value(v) for k, v in g.attrs.items()}
        record = Layer(
            a["name"],
            a["kind"],
            tuple(a["in_shape"]),
            tuple(a["out_shape"]),
            int(a["stride"]),
            int(a["params"]),
            int(a["macs"]),
        )
        state = (
            {k: torch.from_numpy(np.asarray(v[()])) for k, v in g["weights"][spec].items()}
            if spec in g.get("weights", {})
            else None
        )
    if is_int8(spec):  # the distilled parent, quantized on the teacher's inputs: needs the whole context
        from lana.pipeline import context_from_library

        ctx = context_from_library(path)
        return ctx.load([layer.name for layer in ctx.layers].index(record.name), spec)
    if spec == "teacher":
        teacher = teacher if teacher is not None else load_library_teacher(path)
        return build_candidate(spec, record, teacher_block=get_layer(teacher, record.name)).eval()
    module = build_candidate(spec, record)
    if state is not None:
        module.load_state_dict(state)
    return module.eval()
