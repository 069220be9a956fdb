"""Writing files so that a killed process never leaves half of one, and naming a file by its digest.

Every writer in lana goes through :func:`atomic_path`: the content is written to a temporary file
beside the target (same folder, so the rename stays on one file system) and renamed over it only
when the write succeeded; on any error the temporary file is removed and the old target is kept.
Torch-free: safetensors and torch are imported by the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "file_sha256", "read_json", "save_tensors", "torch_save", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; renamed over ``path`` when the block ends without an error.

    The folder of ``path`` is created. The temporary name carries the process id, so two processes
    writing the same target never share a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """Write JSON atomically (values JSON cannot hold are written as their ``str``)."""
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """A JSON file's content, or None when it is missing or unreadable (a cache miss, say)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def save_tensors(path: str | os.PathLike, state: dict, metadata: dict | None = None) -> Path:
    """Write a dict of tensors as safetensors, atomically (metadata values become strings)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (for lana's own work files; they load with ``weights_only=True``)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
