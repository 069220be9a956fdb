"""The inference form of a module: rep branches fused, every conv -> BN folded into one conv.

What ships is what gets timed: ``inference_form`` is the module the latency tables should
measure and the student should export. It works on any module (a candidate, a timm teacher block,
a whole student) and never touches its argument.

Folding ``BN(conv(x))`` into ``conv'(x)`` with ``W' = W * g / s`` and ``b' = (b - mean) * g / s +
beta`` (``s = sqrt(var + eps)``) is exact in eval mode up to float rounding (~1e-6 relative).
A conv -> BN pair is found on the module's traced graph (``torch.fx``, convs and BNs kept as
leaves): a ``BatchNorm2d`` whose input is a ``Conv2d``'s output and that conv's only use, each
module called once. That covers ``nn.Sequential`` units (our ``ConvBnAct``, timm's ``downsample``)
and explicit forwards (timm's ``BasicBlock``: ``conv1`` -> ``bn1``; ``InvertedResidual``:
``conv_pw`` -> ``bn1``, a ``BatchNormAct2d``). A module ``torch.fx`` cannot trace falls back to
adjacent pairs inside plain ``nn.Sequential`` containers, which are always safe.

The folded BN is replaced by ``nn.Identity``, or, for timm's ``BatchNormAct2d`` (BN, dropout and
activation in one module), by ``nn.Sequential(drop, act)``. Other BN subclasses, BNs that use
batch statistics in eval mode (``track_running_stats=False``) and BNs after anything but a
``Conv2d`` (a pre-activation BN, a BN after a Linear) are left alone, and so are int8 modules
(``quantize_int8``'s output, already in inference form: its BNs were folded before quantizing).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .rep import reparameterize

__all__ = ["conv_bn_pairs", "fold_bn", "inference_form", "is_quantized"]

# where PyTorch keeps the modules of a converted (int8) model: quantized convs and linears, and
# the fused conv + ReLU ones
_QUANTIZED_PACKAGES = ("torch.ao.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def is_quantized(module: nn.Module) -> bool:
    """True for an int8 module as ``quantize_int8`` makes it: a ``torch.fx.GraphModule`` holding
    quantized modules. It is left as it is by ``fold_bn`` and ``inference_form``."""
    return isinstance(module, fx.GraphModule) and any(
        type(child).__module__.startswith(_QUANTIZED_PACKAGES) for child in module.modules()
    )


class _ConvBnTracer(fx.Tracer):
    """Keeps every Conv2d and BatchNorm2d (subclasses too, such as timm's ``Conv2dSame`` and
    ``BatchNormAct2d``) as one call in the graph, so that pairs are found by module name."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or is_quantized(module):
            return True
        return super().is_leaf_module(module, qualified_name)


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """The ``(conv name, BN name)`` pairs of ``module`` that ``fold_bn`` would fold.

    Args:
        module: Any module; traced with ``torch.fx`` (in its current mode), or, when that
            fails, searched for adjacent pairs in plain ``nn.Sequential`` containers.

    Returns:
        Dotted names relative to ``module``, in graph order.
    """
    try:
        graph = _ConvBnTracer().trace(module)
    except Exception:  # noqa: BLE001 - any untraceable forward: fall back to the safe subset
        return _sequential_pairs(module)
    modules = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable_bn(modules[node.target]):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1  # the conv's output feeds nothing but this BN
            and calls[source.target] == calls[node.target] == 1
            and modules[source.target].out_channels == modules[node.target].num_features
        ):
            pairs.append((source.target, node.target))
    return pairs


def _sequential_pairs(module: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, sequential in module.named_modules():
        # a subclass that keeps Sequential's forward (ConvBnAct does) runs its children in order
        if not isinstance(sequential, nn.Sequential):
            continue
        if type(sequential).forward is not nn.Sequential.forward:
            continue
        children = list(sequential.named_children())
        for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and _foldable_bn(bn) and conv.out_channels == bn.num_features:
                prefix = f"{name}." if name else ""
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


def _is_timm_bn_act(bn: nn.Module) -> bool:
    # timm.layers.BatchNormAct2d: F.batch_norm, then self.drop, then self.act
    return type(bn).__name__ == "BatchNormAct2d" and all(
        isinstance(getattr(bn, attr, None), nn.Module) for attr in ("drop", "act")
    )


def _foldable_bn(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.BatchNorm2d)
        and (type(module) is nn.BatchNorm2d or _is_timm_bn_act(module))
        and module.running_mean is not None
        and module.running_var is not None
    )


@torch.no_grad()
def _fold_pair(root: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = root.get_submodule(conv_name), root.get_submodule(bn_name)
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight, conv.bias = weight, bias
    after = nn.Sequential(bn.drop, bn.act) if _is_timm_bn_act(bn) else nn.Identity()
    parent_name, _, child_name = bn_name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child_name, after)


def _fold_bn_in_place(module: nn.Module) -> nn.Module:
    if is_quantized(module):  # folded before it was quantized; nothing in it is a float conv
        return module
    for conv_name, bn_name in conv_bn_pairs(module):
        _fold_pair(module, conv_name, bn_name)
    return module


def fold_bn(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every conv -> BN pair folded into the conv.

    The copy's output equals the original's in eval mode to float rounding; ``module`` itself
    is not touched. Rep branches are *not* fused here (``inference_form`` does both).

    Args:
        module: Any module: a candidate, a timm block, a whole network.

    Returns:
        The folded copy, in eval mode.
    """
    return _fold_bn_in_place(copy.deepcopy(module).eval())


def inference_form(module: nn.Module) -> nn.Module:
    """The module as it ships: an eval-mode copy with rep branches fused and BNs folded.

    Time latency tables and export students on this form, so that tables measure what ships;
    train, distil and save weights (``state_dict``) on the original, whose keys the library and
    ``lana.student`` rebuild from specs. ``module`` itself is not touched.

    Args:
        module: Any module: a candidate, a timm block, a whole (student) network.

    Returns:
        A new module in eval mode: every ``RepConvBnAct`` fused into one conv with a bias
        (``lana.candidates.rep.reparameterize``), then every conv -> BN pair folded
        (``fold_bn``). Its output equals ``module.eval()``'s to float rounding (tests: 1e-5).
    """
    form = copy.deepcopy(module).eval()
    if is_quantized(form):  # already what ships: quantize_int8 took the inference form
        return form
    form = reparameterize(form)
    # TODO(limit): a linear conv chain (fir_*_lin without SE: kxk conv then 1x1 conv, no act in
    # between) could collapse into one kxk conv of in -> out channels; it is timed as trained.
    return _fold_bn_in_place(form)
