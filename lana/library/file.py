"""The library's HDF5 file: format constants, attribute coding, checksums and atomic opening.

Only ``lana/library/`` opens library files (a test enforces it). A damaged file must be named, not
read as wrong numbers: every dataset has a CRC-32 of its bytes, and one SHA-256 covers the
attributes of the groups that carry them (root, ``layers/NNN``, ``latency_tables/T``); both live
in the root attribute ``checksums`` (JSON), are written by every write, and are checked on read.
HDF5's own Fletcher-32 filter would cover chunked datasets only, and not the attributes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lana.files import atomic_path

__all__ = ["FORMAT", "FORMAT_VERSION", "LibraryError", "attr_value", "encode_attr", "open_for_write", "text"]

FORMAT = "lana-library"
# 2: checksums (root attr ``checksums``); 1: the same layout without them (still read, unchecked)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
STRING = h5py.string_dtype("utf-8")
CHECKSUMS = "checksums"
# groups whose attributes are data (the attribute digest covers exactly these)
ATTR_GROUPS = ("layers", "latency_tables")


class LibraryError(ValueError):
    """A library file that is missing, damaged, of another format, or lacks what is asked for."""


def text(value) -> str:
    """An HDF5 string (bytes or str) as str."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def attr_value(value):
    """An HDF5 attribute as Python: text decoded, JSON strings parsed, numpy scalars unwrapped."""
    value = text(value) if isinstance(value, (bytes, str, np.bytes_)) else value
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_attr(value: Any):
    """A Python value as an HDF5 attribute: scalars as they are, the rest as sorted JSON."""
    if isinstance(value, (str, int, float, bool, np.generic)):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def dataset_crc(values: np.ndarray) -> int:
    """CRC-32 of a dataset's content (strings joined by NUL, numbers by their raw bytes)."""
    values = np.asarray(values)
    if values.dtype == object or values.dtype.kind in "SU":
        data = b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in values.ravel())
    else:
        data = np.ascontiguousarray(values).tobytes()
    return zlib.crc32(data)


def attrs_digest(f: h5py.File) -> str:
    """SHA-256 over the attributes of the root and of the groups in ``ATTR_GROUPS``."""
    digest = hashlib.sha256()

    def add(where: str, attrs) -> None:
        for key in sorted(attrs):
            if where == "/" and key == CHECKSUMS:
                continue
            value = attr_value(attrs[key])
            digest.update(json.dumps([where, key, value], sort_keys=True, default=str).encode())

    add("/", f.attrs)
    for group in ATTR_GROUPS:
        for name in sorted(f.get(group, {})):
            add(f"{group}/{name}", f[group][name].attrs)
    return digest.hexdigest()


def write_checksums(f: h5py.File) -> None:
    """Record every dataset's CRC and the attribute digest (the last step of every write)."""
    crcs: dict[str, int] = {}
    f.visititems(
        lambda name, obj: crcs.__setitem__(name, dataset_crc(obj[()])) if isinstance(obj, h5py.Dataset) else None
    )
    f.attrs[CHECKSUMS] = json.dumps({"datasets": crcs, "attrs": attrs_digest(f)}, sort_keys=True)


@contextmanager
def open_for_write(path: str | os.PathLike, copy_from: str | os.PathLike | None = None) -> Iterator[h5py.File]:
    """A new HDF5 file (or a copy of ``copy_from``, to edit) renamed over ``path`` on success.

    The header (format, version, ``modified``) and the checksums are written when the block ends,
    so every file that reaches ``path`` is a checked, current-format library.
    """
    import shutil

    with atomic_path(path) as tmp:
        if copy_from is not None:
            shutil.copyfile(copy_from, tmp)
        with h5py.File(tmp, "a" if copy_from is not None else "w") as f:
            yield f
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["modified"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_checksums(f)


def open_for_read(path: Path) -> h5py.File:
    """The file opened read-only, with a :class:`LibraryError` that says what is wrong."""
    if not path.is_file():
        raise LibraryError(f"library {path} does not exist; build one with `lana build --out {path}`")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise LibraryError(
            f"{path} is not a readable HDF5 file ({error}); it is damaged or not a library: rebuild it"
        ) from error
