"""Export a student to ONNX (checked against onnxruntime) and TorchScript, in shipped form
(BN folded into convs, re-parameterisable branches fused), checked against the trained model.

A student with int8 layers (``lana.student.quantize_layers``) keeps them in both: TorchScript
runs the same ``quantized::`` kernels; ONNX stores the int8 weights with QuantizeLinear /
DequantizeLinear pairs around float ops (the QDQ form, which onnxruntime may fuse into int8
kernels; not timed here: int8 libraries have torch CPU tables only). Should the
ONNX export of an int8 student fail (an op without an ONNX mapping, or onnxruntime's int8
rounding differing from PyTorch's beyond the tolerance), it is skipped with the reason recorded
in its ``ExportResult`` instead of failing the run: TorchScript is then the int8 artefact.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["ExportResult", "export_onnx", "export_torchscript", "export_all"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    path: str  # "" when skipped
    max_abs_diff: float | None  # largest difference from the eager model's output on a random batch
    skipped: str | None = None  # why this export was not written


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def export_onnx(
    model: nn.Module, input_shape, path: str | os.PathLike, atol: float = 1e-4, opset: int = 17
) -> ExportResult:
    """Export to ONNX with a dynamic batch and check onnxruntime's output against torch's.

    Raises:
        RuntimeError: when onnxruntime's output differs by more than ``atol`` (relative to the
            output's scale).
    """
    import onnxruntime as ort

    from lana.candidates import inference_form

    path = Path(path)
    tmp = _atomic_target(path)
    reference = model.eval().cpu()
    model = inference_form(reference)  # what ships: BN folded, rep branches fused
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", DeprecationWarning
        )  # the legacy exporter: the dynamo one needs onnxscript graphs
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = reference(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    scale = max(1.0, float(np.max(np.abs(expected))))
    if diff > atol * scale:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"ONNX export of {type(model).__name__} differs from torch by {diff:.2e} (> {atol * scale:.1e})"
        )
    os.replace(tmp, path)
    log.info("ONNX: %s (max |diff| vs torch %.2e)", path, diff)
    return ExportResult(str(path), diff)


def export_torchscript(model: nn.Module, input_shape, path: str | os.PathLike) -> ExportResult:
    """Trace to TorchScript and check the traced output against the eager one."""
    from lana.candidates import inference_form

    path = Path(path)
    tmp = _atomic_target(path)
    reference = model.eval().cpu()
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # trace is deprecated but still the portable format
        traced = torch.jit.trace(inference_form(reference), x)
        diff = float((traced(x) - reference(x)).abs().max())
    traced.save(str(tmp))
    os.replace(tmp, path)
    return ExportResult(str(path), diff)


def export_all(model: nn.Module, input_shape, out: str | os.PathLike, name: str = "student") -> dict[str, ExportResult]:
    """ONNX and TorchScript into ``out``; for a model with int8 layers a failed ONNX export is
    skipped (its ``ExportResult.skipped`` says why), as the module docstring explains."""
    from lana.candidates import is_quantized

    out = Path(out)
    int8 = any(is_quantized(module) for module in model.modules())
    # the exporter writes int8 layers as QuantizeLinear -> DequantizeLinear -> float Conv, which
    # onnxruntime rounds differently from PyTorch's int8 kernels where a value falls between two
    # int8 steps: 3.8e-4 on the logits of a tiny all-int8 resnet10t, over the float tolerance
    # (1e-4) but far under one step of its output; int8 models are held to 1e-2
    try:
        onnx = export_onnx(model, input_shape, out / f"{name}.onnx", atol=1e-2 if int8 else 1e-4)
    except Exception as error:  # noqa: BLE001 - any exporter or onnxruntime failure of an int8 model
        if not int8:
            raise
        reason = f"ONNX export of the int8 student failed: {type(error).__name__}: {error}"
        log.warning("%s; skipped (the TorchScript export keeps the int8 layers)", reason)
        onnx = ExportResult("", None, skipped=reason)
    return {"onnx": onnx, "torchscript": export_torchscript(model, input_shape, out / f"{name}.torchscript.pt")}
