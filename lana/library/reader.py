"""Reading a library: :class:`Library` checks the header and checksums and hands out its records.

Torch-free (h5py and numpy only), so that ``lana solve``, ``pareto`` and ``info`` start fast; the
torch modules built from a library are made in :mod:`lana.context`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lana.library.file import (
    ATTR_GROUPS,
    CHECKSUMS,
    FORMAT,
    READABLE_VERSIONS,
    LibraryError,
    attr_value,
    attrs_digest,
    dataset_crc,
    open_for_read,
    text,
)

__all__ = ["LayerRecord", "Library"]

log = logging.getLogger(__name__)


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

    def to_layer(self):
        """The :class:`lana.layers.Layer` this record describes (imports torch)."""
        from lana.layers import Layer

        return Layer(self.name, self.kind, self.in_shape, self.out_shape, self.stride, self.params, self.macs)


def _layer_keys(f: h5py.File) -> list[str]:
    """The layer groups in network order (their names are zero-padded indices)."""
    keys = list(f["layers"])
    return sorted(keys, key=lambda k: (0, int(k), k) if k.isdigit() else (1, 0, k))


class Library:
    """A library file, opened for reading: header and attribute checksum checked on opening,
    every dataset's checksum when it is read.

    Args:
        path: the ``.h5`` file.

    Raises:
        LibraryError: the file is missing, unreadable, damaged, of another format or version.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with self._open() as f, self._damage():
            self.attrs = {k: attr_value(v) for k, v in f.attrs.items() if k != CHECKSUMS}
            self._check_header(f)
            self._digests = self._check_attrs(f)
            self._keys = _layer_keys(f)
            self.tables: dict[str, dict] = {
                name: {k: attr_value(v) for k, v in g.attrs.items()} for name, g in f.get("latency_tables", {}).items()
            }
        self._records: list[LayerRecord] | None = None

    # ---- header ---------------------------------------------------------------------------

    def _open(self) -> h5py.File:
        return open_for_read(self.path)

    @contextmanager
    def _damage(self) -> Iterator[None]:
        """h5py's errors on a damaged file (a bad B-tree node, a truncated heap) as a LibraryError."""
        try:
            yield
        except LibraryError:
            raise
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as error:
            raise LibraryError(f"{self.path} is damaged or not a complete library ({error}); rebuild it") from error

    def _check_header(self, f: h5py.File) -> None:
        fmt = self.attrs.get("format", "")
        if fmt != FORMAT:
            raise LibraryError(f"{self.path} is not a lana library (its format attribute is {fmt!r}, not {FORMAT!r})")
        version = self.attrs.get("format_version")
        if version not in READABLE_VERSIONS:
            raise LibraryError(
                f"{self.path} is a library of format_version {version}; this lana reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: rebuild it with this lana's `lana build`"
            )
        if "layers" not in f or not len(f["layers"]):
            raise LibraryError(f"{self.path} is damaged or unfinished: it has no layers; rebuild it with `lana build`")

    def _check_attrs(self, f: h5py.File) -> dict[str, int] | None:
        if CHECKSUMS not in f.attrs:
            if self.attrs["format_version"] >= 2:
                raise LibraryError(f"{self.path} is damaged: its checksums are missing; rebuild it")
            log.warning("%s is a format-1 library without checksums: damage cannot be detected", self.path)
            return None
        try:
            sums = json.loads(text(f.attrs[CHECKSUMS]))
        except json.JSONDecodeError:
            raise LibraryError(f"{self.path} is damaged: its checksums attribute is not JSON; rebuild it") from None
        if sums.get("attrs") != attrs_digest(f):
            raise LibraryError(
                f"{self.path} is damaged: its attributes (of /, {', '.join(ATTR_GROUPS)}) do not match their "
                "checksum; rebuild it or restore a copy"
            )
        return {k: int(v) for k, v in sums.get("datasets", {}).items()}

    def read(self, f: h5py.File, name: str) -> np.ndarray:
        """Dataset ``name`` of the open file, checked against its stored CRC."""
        try:
            values = f[name][()]
        except (OSError, KeyError, RuntimeError) as error:
            raise LibraryError(f"{self.path} is damaged: cannot read {name} ({error}); rebuild it") from error
        if self._digests is not None:
            expected = self._digests.get(name)
            if expected is None or dataset_crc(values) != expected:
                raise LibraryError(
                    f"{self.path} is damaged: dataset {name} does not match its checksum; rebuild it or restore a copy"
                )
        return values

    # ---- what a library is ------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        return int(self.attrs["format_version"])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def teacher(self) -> dict:
        return dict(self.attrs.get("teacher") or {})

    @property
    def config(self) -> dict:
        return dict(self.attrs.get("config") or {})

    @property
    def stages(self) -> dict:
        return dict(self.attrs.get("stages") or {})

    @property
    def model(self) -> str:
        return self.teacher.get("model", "")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        t = self.teacher
        return (int(t.get("in_chans", 3)), int(t["img_size"]), int(t["img_size"]))

    def require_complete(self) -> None:
        """Raise when a build stage is missing, saying which and what finishes it."""
        if self.complete:
            return
        missing = [s for s in ("distill", "score") if not self.stages.get(s)] + ([] if self.tables else ["latency"])
        fix = "`lana latency LIB` adds a latency table" if missing == ["latency"] else "rerun `lana build` to finish it"
        raise LibraryError(
            f"{self.path} is incomplete (missing: {', '.join(missing) or 'unknown'}): {fix}, or pass --allow-incomplete"
        )

    def same_build(self, identity: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The fields of ``identity`` (a build's identifying settings) that this library was built
        with other values of, as ``{field: (stored, wanted)}``; empty when it is the same build."""
        stored = self.config
        stored.setdefault("int8", False)  # libraries from before --int8 existed
        wanted = json.loads(json.dumps(dict(identity), default=str))
        return {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}

    # ---- layers, tables, weights ---------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        return [r.name for r in self.layers()]

    def layers(self) -> list[LayerRecord]:
        """Every layer's record, in network order (read once)."""
        if self._records is None:
            with self._open() as f, self._damage():
                self._records = [self._record(f, f"layers/{key}") for key in self._keys]
        return self._records

    def _record(self, f: h5py.File, where: str) -> LayerRecord:
        g = f[where]
        a = {k: attr_value(v) for k, v in g.attrs.items()}

        def group(sub: str) -> dict[str, np.ndarray]:
            return {k: self.read(f, f"{where}/{sub}/{k}") for k in g.get(sub, {})}

        return LayerRecord(
            name=a["name"],
            kind=a["kind"],
            in_shape=tuple(a["in_shape"]),
            out_shape=tuple(a["out_shape"]),
            stride=int(a["stride"]),
            params=int(a["params"]),
            macs=int(a["macs"]),
            specs=[text(s) for s in np.atleast_1d(self.read(f, f"{where}/specs"))],
            cand_params=self.read(f, f"{where}/params"),
            cand_macs=self.read(f, f"{where}/macs"),
            distill_loss=self.read(f, f"{where}/distill_loss"),
            scores=group("scores"),
            latency=group("latency"),
            latency_spread=group("latency_spread"),
        )

    def table(self, name: str) -> dict:
        """A latency table's attributes (device, backend, batch_size, fixed_ms, teacher_ms, ...)."""
        from lana.table_names import canonical_table

        name = name if name in self.tables else canonical_table(name)
        if name not in self.tables:
            have = ", ".join(self.tables) or "none"
            raise LibraryError(
                f"{self.path} has no latency table {name!r}; it has {have} (add one with `lana latency`)"
            )
        return self.tables[name]

    def table_noise(self, name: str) -> float:
        """Relative noise of a table: the fixed part's spread over the teacher's time (at least 3%)."""
        attrs = self.table(name)
        return max(0.03, float(attrs.get("fixed_spread_ms", 0.0)) / max(1e-9, float(attrs["teacher_ms"])))

    def layer_index(self, layer: int | str) -> int:
        """A layer's index, from its index or its name."""
        if isinstance(layer, int):
            if not 0 <= layer < len(self._keys):
                raise LibraryError(f"layer index {layer} out of range: the library has {len(self._keys)} layers")
            return layer
        names = self.layer_names
        if layer not in names:
            raise LibraryError(f"no layer {layer!r} in the library; layers are {', '.join(names)}")
        return names.index(layer)

    def weights(self, layer: int | str, spec: str) -> dict[str, np.ndarray] | None:
        """A candidate's distilled state dict (numpy), or None for candidates stored without one."""
        index = self.layer_index(layer)
        record = self.layers()[index]
        if spec not in record.specs:
            raise LibraryError(f"layer {record.name} has no candidate {spec!r}; it has {', '.join(record.specs)}")
        where = f"layers/{self._keys[index]}/weights/{spec}"
        with self._open() as f, self._damage():
            return {k: self.read(f, f"{where}/{k}") for k in f[where]} if where in f else None

    def all_weights(self) -> dict[tuple[int, str], dict[str, np.ndarray]]:
        """Every stored candidate state dict, keyed ``(layer index, spec)``."""
        out = {}
        with self._open() as f, self._damage():
            for index, key in enumerate(self._keys):
                for spec, group in f[f"layers/{key}"].get("weights", {}).items():
                    out[(index, spec)] = {k: self.read(f, f"layers/{key}/weights/{spec}/{k}") for k in group}
        return out

    def teacher_state(self) -> dict[str, np.ndarray]:
        """The teacher's state dict (numpy)."""
        with self._open() as f, self._damage():
            return {k: self.read(f, f"teacher_weights/{k}") for k in f.get("teacher_weights", {})}

    def score_kinds(self) -> list[str]:
        records = self.layers()
        return sorted(set.intersection(*(set(r.scores) for r in records))) if records else []

    @property
    def calibrations(self) -> dict:
        """Score kinds fitted on whole students (``lana calibrate``): kind -> how it was made."""
        return dict(self.attrs.get("calibrations") or {})

    def default_score(self, kinds: Iterable[str] | None = None) -> str | None:
        """A calibrated kind when present (``lana calibrate``), else the build's ``default_score``,
        else ``kl``, else the first kind."""
        kinds = list(self.score_kinds() if kinds is None else kinds)
        for kind in (*self.calibrations, self.config.get("default_score"), self.attrs.get("default_score"), "kl"):
            if kind in kinds:
                return kind
        return kinds[0] if kinds else None
