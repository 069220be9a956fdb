"""Latency table names: a table is named after the target that timed it (torch-free).

``DEVICE[-BACKEND]-bBATCH``: ``cpu-b64`` (eager torch on the CPU), ``cpu-ort-b1`` (ONNX Runtime on
the CPU; ``ort-b1`` is the same table), ``cpu-ov-b1`` (OpenVINO on the CPU; ``ov-b1``), ``cuda-b64``
(torch on a GPU, CUDA events). Libraries store the canonical name (:func:`canonical_table`); every
lookup accepts either spelling.
"""

from __future__ import annotations

__all__ = ["canonical_table", "check_int8_target", "default_tables", "parse_table_name", "table_name"]

_BACKENDS = {
    "ort": "onnxruntime",
    "onnxruntime": "onnxruntime",
    "ov": "openvino",
    "openvino": "openvino",
    "torch": "torch",
}
_SUFFIX = {"torch": "", "onnxruntime": "-ort", "openvino": "-ov"}
_CPU_ONLY = ("ort", "onnxruntime", "ov", "openvino")  # runtimes that time the CPU: `ort-b1` is `cpu-ort-b1`


def parse_table_name(name: str) -> dict:
    """``cpu-b64`` / ``cpu-ort-b1`` / ``ort-b1`` / ``ov-b1`` / ``cuda-b64`` → device, backend, batch size.

    Raises:
        ValueError: a name that does not follow ``DEVICE[-BACKEND]-bN``.
    """
    parts = name.split("-")
    if parts[0] in _CPU_ONLY:  # ONNX Runtime and OpenVINO tables time the CPU
        parts = ["cpu", *parts]
    try:
        batch = int(parts[-1].removeprefix("b"))
        if not parts[-1].startswith("b") or batch < 1:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"table name {name!r} must end in -b<batch size>, e.g. cpu-b64, cpu-ort-b1 (or ort-b1), ov-b1, cuda-b64"
        ) from None
    device = parts[0]
    if device not in ("cpu", "cuda") or len(parts) > 3:
        raise ValueError(f"table name {name!r} must be DEVICE[-BACKEND]-bN with DEVICE cpu or cuda, e.g. cpu-ort-b1")
    backend = _BACKENDS.get(parts[1] if len(parts) == 3 else "torch")
    if backend is None:
        raise ValueError(f"table name {name!r}: backend must be torch, ort (onnxruntime) or ov (openvino)")
    return {"device": device, "backend": backend, "batch_size": batch}


def table_name(device: str, backend: str, batch_size: int) -> str:
    """The inverse of :func:`parse_table_name`: ``("cpu", "onnxruntime", 1)`` → ``cpu-ort-b1``."""
    return f"{device}{_SUFFIX[backend]}-b{batch_size}"


def canonical_table(name: str) -> str:
    """The stored spelling of a table name (``ort-b1`` → ``cpu-ort-b1``); other names unchanged."""
    try:
        return table_name(**parse_table_name(name))
    except ValueError:
        return name  # not a timing target's name (synthetic libraries' tables): looked up as given


def default_tables(device: str) -> tuple[str, ...]:
    """Batch 1 and 64 on the build's device."""
    return ("cuda-b1", "cuda-b64") if device == "cuda" else ("cpu-b1", "cpu-b64")


def check_int8_target(device: str, tables) -> None:
    """Int8 candidates run on PyTorch's x86 quantized kernels (fbgemm / oneDNN) only: refuse
    another device or backend before any work is done.

    Raises:
        ValueError: For a device other than the CPU, or a table not timed by torch on the CPU.
    """
    wrong = [
        name
        for name in tables
        if parse_table_name(name)["device"] != "cpu" or parse_table_name(name)["backend"] != "torch"
    ]
    if device != "cpu" or wrong:
        what = f"device {device!r}" if device != "cpu" else f"table(s) {', '.join(wrong)}"
        raise ValueError(
            f"--int8 needs --device cpu and cpu-b* tables (got {what}): int8 candidates run on "
            "PyTorch's x86 quantized kernels only, which neither CUDA, ONNX Runtime nor OpenVINO tables time"
        )
