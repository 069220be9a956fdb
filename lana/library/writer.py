"""Writing a library: the whole file at the end of a build, or one latency table into a finished one.

Every write is atomic (a new file beside the old one, renamed over it) and ends with the header and
the checksums (:func:`lana.library.file.open_for_write`), so a killed process never leaves a
half-written or unchecked library behind. The synthetic libraries of the solver's tests and
benchmarks are written here too (:func:`write_library` without weights).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np

from lana.library.file import STRING, LibraryError, attr_value, encode_attr, open_for_write
from lana.library.reader import LayerRecord, Library

__all__ = ["write_library", "write_latency_table"]


def _now() -> str:
    """Local time with milliseconds: a table re-timed within a second of the build still differs."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def write_library(
    path: str | os.PathLike,
    meta: Mapping,
    layers: Sequence[LayerRecord],
    weights: Mapping[tuple[int, str], Mapping[str, np.ndarray]] | None = None,
    teacher_state: Mapping[str, np.ndarray] | None = None,
    tables: Sequence[Mapping] = (),
    complete: bool = True,
) -> Path:
    """Write a whole library atomically.

    Args:
        meta: root attributes: ``teacher`` (dict), ``config`` (dict), ``stages`` (dict), ...
        layers: per layer its record (shapes, specs, per-candidate arrays).
        weights: ``(layer_index, spec) -> state dict`` as numpy arrays.
        teacher_state: the teacher's state dict, so the library alone rebuilds any student.
        tables: latency table attributes (``name``, device, backend, ...).
        complete: every stage done (distillation, scores, at least one latency table).
    """
    path = Path(path)
    with open_for_write(path) as f:
        f.attrs["complete"] = bool(complete)
        f.attrs["created"] = _now()
        for key, value in meta.items():
            f.attrs[key] = encode_attr(value)
        group = f.create_group("teacher_weights")
        for key, value in (teacher_state or {}).items():
            group.create_dataset(key, data=value)
        group = f.create_group("layers")
        for index, record in enumerate(layers):
            _write_layer(group.create_group(f"{index:03d}"), record, index, weights or {})
        group = f.create_group("latency_tables")
        for table in tables:
            _write_table_attrs(group, {"created": _now(), **table})
    return path


def _write_layer(g: h5py.Group, record: LayerRecord, index: int, weights) -> None:
    g.attrs.update(
        name=record.name,
        kind=record.kind,
        in_shape=encode_attr(list(record.in_shape)),
        out_shape=encode_attr(list(record.out_shape)),
        stride=record.stride,
        params=record.params,
        macs=record.macs,
    )
    g.create_dataset("specs", data=np.array(record.specs, dtype=object), dtype=STRING)
    g.create_dataset("params", data=np.asarray(record.cand_params, dtype=np.int64))
    g.create_dataset("macs", data=np.asarray(record.cand_macs, dtype=np.int64))
    g.create_dataset("distill_loss", data=np.asarray(record.distill_loss, dtype=np.float64))
    for kind, values in record.scores.items():
        g.create_dataset(f"scores/{kind}", data=np.asarray(values, dtype=np.float64))
    for table, values in record.latency.items():
        g.create_dataset(f"latency/{table}", data=np.asarray(values, dtype=np.float64))
        spread = record.latency_spread.get(table, np.zeros(len(values)))
        g.create_dataset(f"latency_spread/{table}", data=np.asarray(spread, dtype=np.float64))
    w = g.create_group("weights")
    for spec in record.specs:
        state = weights.get((index, spec))
        if state:
            sg = w.create_group(spec)
            for key, value in state.items():
                sg.create_dataset(key, data=value)


def _write_table_attrs(group: h5py.Group, table: Mapping) -> None:
    name = table["name"]
    if name in group:
        del group[name]
    g = group.create_group(name)
    for key, value in table.items():
        if key != "name":
            g.attrs[key] = encode_attr(value)


def _check_per_candidate(path, values_per_layer: Sequence, what: str, unit: str) -> None:
    """Raise unless there is one value per candidate of every layer (the library's order); reading
    the library first also checks the header and every dataset the edit keeps."""
    records = Library(path).layers()
    if len(records) != len(values_per_layer):
        raise LibraryError(f"{what} has {len(values_per_layer)} layers, the library {len(records)}")
    for record, values in zip(records, values_per_layer):
        if len(values) != len(record.specs):
            raise LibraryError(
                f"{what}: layer {record.name} has {len(record.specs)} candidates, got {len(values)} {unit}"
            )


def _layer_groups(f: h5py.File) -> list[h5py.Group]:
    return [f["layers"][key] for key in sorted(f["layers"], key=int)]


def _replace(group: h5py.Group, name: str, values) -> None:
    if name in group:
        del group[name]
    group.create_dataset(name, data=np.asarray(values, dtype=np.float64))


def write_latency_table(path: str | os.PathLike, table: Mapping, latency_ms: Sequence, spread_ms: Sequence) -> None:
    """Add (or replace) a named latency table in an existing library, atomically.

    Args:
        table: attributes, with at least ``name``, ``device``, ``backend``, ``batch_size``,
            ``fixed_ms`` and ``teacher_ms``.
        latency_ms, spread_ms: per layer, one value per candidate, in the library's spec order.

    Raises:
        LibraryError: the library is damaged, or the table's shape is not the library's.
    """
    name = table["name"]
    _check_per_candidate(path, latency_ms, f"table {name!r}", "times")
    with open_for_write(path, copy_from=path) as f:
        for g, values, spread in zip(_layer_groups(f), latency_ms, spread_ms):
            _replace(g, f"latency/{name}", values)
            _replace(g, f"latency_spread/{name}", spread)
        _write_table_attrs(f.require_group("latency_tables"), {**table, "created": _now()})
        stages = attr_value(f.attrs.get("stages", "{}")) or {}
        f.attrs["complete"] = bool(stages.get("distill") and stages.get("score"))


def write_scores(path: str | os.PathLike, kind: str, scores: Sequence, info: Mapping) -> None:
    """Add (or replace) score kind ``kind`` in every layer of an existing library, atomically,
    with what made it in the root attribute ``calibrations[kind]``.

    Args:
        scores: per layer, one value per candidate, in the library's spec order.
        info: JSON-able record of how the scores were made (samples, fit, correlations).

    Raises:
        LibraryError: the library is damaged, or the scores' shape is not the library's.
    """
    _check_per_candidate(path, scores, f"score kind {kind!r}", "scores")
    with open_for_write(path, copy_from=path) as f:
        for g, values in zip(_layer_groups(f), scores):
            _replace(g, f"scores/{kind}", values)
        calibrations = attr_value(f.attrs.get("calibrations", "{}")) or {}
        f.attrs["calibrations"] = encode_attr({**calibrations, kind: dict(info)})
