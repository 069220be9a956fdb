"""Int8 candidates on CPU: post-training static quantization of one block (issue 10, item 3).

``quantize_int8`` takes any block (a candidate or a timm teacher block), puts it in its
inference form (``lana.candidates.inference_form``: rep fused, BN folded), and quantizes it with
PyTorch's FX graph mode (``torch.ao.quantization.quantize_fx``) for the quantized engine in use,
``x86`` by default (fbgemm kernels; oneDNN where it is faster): int8 weights per output channel, uint8 activations
per tensor, observers calibrated on the inputs given. The result takes and returns float32
tensors (it quantizes on entry and dequantizes on exit), so it drops into a float network one
layer at a time, and its latency includes that conversion, as it must when the ILP mixes
precisions per layer.

Why this path. ``torch.ao.quantization`` is deprecated in favour of torchao's pt2e flow, but is
still shipped and working in torch 2.14, and it is the only one here that runs real int8 kernels
in eager mode: torchao is not installed, and its pt2e output runs as quantize/dequantize pairs
around float ops unless compiled with Inductor. The deprecation warnings are silenced here.

What stays float. Ops without a quantized kernel run in float between a dequantize and a
quantize, which costs time and buys no accuracy: ``SiLU`` (every ``*_silu`` spec and
EfficientNet's own blocks), ``GELU`` and ``LayerNorm`` (ConvNeXt teacher blocks). ReLU,
hard-swish, the sigmoid gate and mean of squeeze-excite, residual adds, concatenation (ghost) and
slices (ghost, crop) all have int8 kernels.

Int8 candidates in the space. An int8 candidate is named by its float parent's spec plus
``_int8`` (``ir_k3_e3_int8``, ``teacher_int8``; never ``id_int8``): it is the parent, distilled as
float, then quantized with the teacher's inputs at its layer as calibration data. The spec
helpers below are all the rest of the package needs to know about it.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Iterable

import torch
from torch import fx, nn

from .fuse import inference_form

__all__ = [
    "INT8_SUFFIX",
    "QuantizationError",
    "float_parent",
    "int8_spec",
    "is_int8",
    "quantization_error",
    "quantize_int8",
]

INT8_SUFFIX = "_int8"


def is_int8(spec: str) -> bool:
    """True for an int8 candidate's spec (its float parent's spec + ``_int8``)."""
    return spec.endswith(INT8_SUFFIX)


def float_parent(spec: str) -> str:
    """The float candidate an int8 spec quantizes (``ir_k3_e3_int8`` -> ``ir_k3_e3``); a float
    spec is its own parent.

    Raises:
        ValueError: For ``id_int8``: the identity computes nothing to quantize.
    """
    parent = spec.removesuffix(INT8_SUFFIX)
    if parent == "id" and spec != parent:
        raise ValueError("'id_int8' is not a candidate: the identity computes nothing to quantize")
    return parent


def int8_spec(spec: str) -> str:
    """The int8 twin of float spec ``spec``.

    Raises:
        ValueError: For ``id`` (nothing to quantize) or a spec that is int8 already.
    """
    if spec == "id" or is_int8(spec):
        raise ValueError(f"{spec!r} has no int8 twin: 'id' computes nothing, an int8 spec is one already")
    return spec + INT8_SUFFIX


@dataclasses.dataclass(frozen=True)
class QuantizationError:
    """How far an int8 module's outputs are from the float module's.

    Attributes:
        max_abs: Largest absolute difference over all outputs.
        rms: Root mean square of the difference.
        reference_rms: Root mean square of the float outputs, to read the two above against.
    """

    max_abs: float
    rms: float
    reference_rms: float

    @property
    def relative_rms(self) -> float:
        return self.rms / max(self.reference_rms, 1e-12)


def _strip_identities(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Drop ``nn.Identity`` calls (the placeholders folded BNs leave), so that FX quantization
    sees conv -> act and fuses the pair into one int8 ``ConvReLU2d``."""
    modules = dict(graph_module.named_modules())
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module" and isinstance(modules[node.target], nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
        elif node.op in ("placeholder", "output"):
            # no annotation: re-traced by prepare_fx, a ``torch.Tensor`` annotation comes back
            # as ``_torch_Tensor_``, a name torch.jit.script cannot resolve
            node.type = None
    graph_module.graph.lint()
    graph_module.recompile()
    return graph_module


@torch.no_grad()
def quantize_int8(
    module: nn.Module,
    example_input: torch.Tensor,
    calibration_inputs: Iterable[torch.Tensor],
) -> nn.Module:
    """An int8 copy of ``module`` for CPU, by post-training static quantization.

    Args:
        module: A block (candidate or teacher) on the CPU, float32; not modified.
        example_input: One input batch, used to trace the block.
        calibration_inputs: Input batches the activation observers see (a few hundred samples
            of the layer's real inputs, e.g. the teacher's features at this layer; random data
            calibrates ranges that the real data will not have).

    Returns:
        A ``torch.fx.GraphModule`` in eval mode, float32 in and out, int8 inside. It runs on
        CPU only (the quantized kernels are fbgemm / oneDNN ones), and cannot be trained.

    Raises:
        RuntimeError: If the block cannot be traced by ``torch.fx`` (data-dependent control
            flow), with the tracer's message.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    form = inference_form(module).cpu().float()
    try:
        traced = _strip_identities(fx.symbolic_trace(form))
    except Exception as error:  # any tracer failure gets the same explanation
        raise RuntimeError(f"cannot quantize {type(module).__name__}: torch.fx cannot trace it ({error})") from error
    # weights are packed for the engine in use, which must stay the same when the module runs
    backend = torch.backends.quantized.engine
    if backend not in ("x86", "fbgemm", "onednn"):
        raise RuntimeError(
            f"quantized engine is {backend!r}; set torch.backends.quantized.engine = 'x86' "
            "(the x86 CPU kernels this module targets) before quantizing and running"
        )
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated (and says so on every call) but still the only
        # eager int8 path on CPU here; see the module docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        prepared = prepare_fx(traced, get_default_qconfig_mapping(backend), (example_input.cpu().float(),))
        for batch in calibration_inputs:
            prepared(batch.cpu().float())
        quantized = convert_fx(prepared)
    return quantized.eval()


@torch.no_grad()
def quantization_error(reference: nn.Module, quantized: nn.Module, inputs: Iterable[torch.Tensor]) -> QuantizationError:
    """Compare ``quantized`` with the float ``reference`` (run in eval mode on a copy).

    Args:
        reference: The float module, e.g. the one given to ``quantize_int8``.
        quantized: Its int8 version.
        inputs: Input batches (held out from calibration, for an honest number).

    Returns:
        The ``QuantizationError`` over all batches.
    """
    reference = copy.deepcopy(reference).eval()
    max_abs, squared, reference_squared, count = 0.0, 0.0, 0.0, 0
    for batch in inputs:
        expected, actual = reference(batch), quantized(batch)
        difference = (actual - expected).double()
        max_abs = max(max_abs, float(difference.abs().max()))
        squared += float(difference.square().sum())
        reference_squared += float(expected.double().square().sum())
        count += expected.numel()
    count = max(count, 1)
    return QuantizationError(max_abs, (squared / count) ** 0.5, (reference_squared / count) ** 0.5)
