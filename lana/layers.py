"""Stage 1 of LANA: find the layers of a pretrained CNN that candidate operations can replace.

A *layer* in the paper's sense is one block of the network (``layer2.0`` of a ResNet,
``blocks.3.1`` of an EfficientNet, ``stages.1.blocks.0`` of a ConvNeXt). ``find_layers`` finds
them with one general rule over the module tree and the shapes traced on a dummy batch, not with
a per-model table, so timm CNN families that were never tried here work as long as they are
built the usual way (blocks inside sequences of blocks).

The rule. Modules are walked from the root.

* A *container* is an ``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict``, or a *stage*:
  a module whose traced forward threads one tensor through its called children in order, where
  the children are blocks rather than layers (none has parameters of its own, and some hold a
  conv two levels down): timm's ``RegStage``, ``ConvNeXtStage``. A block without a residual (a
  strided ``InvertedResidual``, ReXNet's ``LinearBottleneck``) threads its input too, but
  through convs or conv-BN-act units, so it is not a stage.
* A *block* is a module, not a container, whose parent is a container, which has children of
  its own and a Conv2d among them, and which runs exactly once per forward, taking one 4D
  feature map (not the image itself; no tensor keyword arguments) and returning one 4D tensor
  no larger in H and W.

Walking stops at blocks (a squeeze-excite inside a block is not a layer) and at stem units that
read the image, and descends elsewhere. Anything satisfying the rule can be swapped for a module
with the same input and output shapes without touching the rest of the network.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import weakref

import torch
from torch import nn

from lana.candidates import space_for
from lana.candidates.count import module_macs
from lana.candidates.summary import SpaceRow, SpaceSummary

__all__ = [
    "SUPPORTED_KINDS",
    "Layer",
    "SpaceRow",
    "SpaceSummary",
    "describe_space",
    "find_layers",
    "get_layer",
    "replace_layer",
]

# Block classes the rule is tested on (for the error message; the rule itself is general).
SUPPORTED_KINDS = (
    "BasicBlock, Bottleneck (ResNet, ResNeXt, RegNet)",
    "DepthwiseSeparableConv, InvertedResidual, EdgeResidual, ConvBnAct (EfficientNet, MobileNet)",
    "ConvNeXtBlock (ConvNeXt)",
)


@dataclasses.dataclass(frozen=True)
class Layer:
    """A replaceable layer (block) of a network.

    Attributes:
        name: Module path, e.g. ``layer2.0`` or ``blocks.3.1``.
        kind: Class name of the teacher's block, e.g. ``InvertedResidual``.
        in_shape: Input shape ``(C, H, W)`` without the batch.
        out_shape: Output shape ``(C, H, W)``.
        stride: Spatial downsampling factor: the smallest integer ``s`` with
            ``ceil(H_in / s) == H_out`` (what a stride-``s`` conv with "same" padding gives;
            1 when the size is kept), else ``H_in // H_out``.
        params: Parameters of the teacher's block.
        macs: Multiply-accumulates of the teacher's block for one sample at ``in_shape``.
    """

    name: str
    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: int
    params: int
    macs: int


@dataclasses.dataclass
class _Trace:
    """What the hooks saw of one module during the dummy forward."""

    calls: int = 0
    order: int = -1
    single_4d: bool = False  # one 4D tensor in (no tensor kwargs) and one 4D tensor out
    in_tag: int = -1
    out_tag: int = -1
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    macs: int = 0


class _TensorTags:
    """Serial numbers for tensors, by identity, without keeping them alive (ids get reused)."""

    def __init__(self):
        self._tags: dict[int, tuple[weakref.ref, int]] = {}
        self._next = itertools.count()

    def __call__(self, tensor: torch.Tensor) -> int:
        entry = self._tags.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            entry = (weakref.ref(tensor), next(self._next))
            self._tags[id(tensor)] = entry
        return entry[1]


@torch.no_grad()
def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, _Trace]:
    """Run one dummy sample through ``model`` in eval mode and record every module's call."""
    traces = {name: _Trace() for name, _ in model.named_modules()}
    tags, order = _TensorTags(), itertools.count()

    def make_hook(name):
        def hook(module, args, kwargs, output):
            trace = traces[name]
            trace.calls += 1
            trace.macs += module_macs(module, output) if isinstance(output, torch.Tensor) else 0
            if trace.calls > 1:
                return
            trace.order = next(order)
            tensor_kwargs = any(isinstance(v, torch.Tensor) for v in kwargs.values())
            x = args[0] if len(args) == 1 else None
            if (
                isinstance(x, torch.Tensor)
                and x.dim() == 4
                and not tensor_kwargs
                and isinstance(output, torch.Tensor)
                and output.dim() == 4
            ):
                trace.single_4d = True
                trace.in_tag, trace.out_tag = tags(x), tags(output)
                trace.in_shape, trace.out_shape = tuple(x.shape[1:]), tuple(output.shape[1:])

        return hook

    handles = [
        module.register_forward_hook(make_hook(name), with_kwargs=True) for name, module in model.named_modules()
    ]
    # per-module modes: model.train(flag) would also flip modules the caller froze in eval mode
    modes = {module: module.training for module in model.modules()}
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        model.eval()  # batch of one: BN must use its running statistics
        model(torch.randn(1, *input_shape, device=device, dtype=dtype))
    except Exception as error:  # e.g. a ViT asserts its input size; say which input failed
        raise ValueError(
            f"cannot trace {type(model).__name__} on one input of shape {tuple(input_shape)}: {error}"
        ) from error
    finally:
        for module, mode in modes.items():
            module.training = mode
        for handle in handles:
            handle.remove()
    return traces


def _is_container(name: str, module: nn.Module, traces: dict[str, _Trace]) -> bool:
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return True
    trace = traces[name]
    if trace.calls != 1 or not trace.single_4d or _has_own_parameters(module):
        return False
    called = _called_children(name, module, traces)
    if not called:
        return False
    # A block (conv, bn, ... as direct children) is not a stage, even when it has no residual
    # and so threads its input through its children like a stage does.
    if any(t.calls != 1 or not t.single_4d or _has_own_parameters(c) for t, c in called):
        return False
    if max(_conv_depth(c) for _, c in called) < 2:
        return False  # children are conv-BN-act units: this is a block without a residual
    called.sort(key=lambda pair: pair[0].order)
    tags_in = [trace.in_tag] + [t.out_tag for t, _ in called]
    tags_out = [t.in_tag for t, _ in called] + [trace.out_tag]
    return tags_in == tags_out


def _called_children(name: str, module: nn.Module, traces: dict[str, _Trace]) -> list[tuple[_Trace, nn.Module]]:
    """The children that ran, looking through ModuleLists / ModuleDicts, which never run
    themselves: a block that loops over ``self.branches`` calls those branches directly."""
    called = []
    for child_name, child in module.named_children():
        child_name = _join(name, child_name)
        if traces[child_name].calls > 0:
            called.append((traces[child_name], child))
        elif isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            called += _called_children(child_name, child, traces)
    return called


def _conv_depth(module: nn.Module) -> int:
    """How deep the deepest Conv2d sits below ``module`` (1: a direct child; 0: none)."""
    depths = [n.count(".") + 1 for n, m in module.named_modules() if n and isinstance(m, nn.Conv2d)]
    return max(depths, default=0)


def _has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _is_block(module: nn.Module, trace: _Trace, input_shape: tuple[int, ...]) -> bool:
    return (
        trace.calls == 1
        and trace.single_4d
        # a stem conv on the image (cspresnet's stem.conv1) is no block: with 3 input channels
        # every candidate would degenerate (an SE on 3 channels, a 3-wide expansion)
        and trace.in_shape != input_shape
        and any(True for _ in module.children())
        and any(isinstance(m, nn.Conv2d) for m in module.modules())
        and trace.out_shape[1] <= trace.in_shape[1]
        and trace.out_shape[2] <= trace.in_shape[2]
    )


def _stride(in_size: int, out_size: int) -> int:
    # 224 -> 112 and 7 -> 4 are stride 2 ("same" padding rounds up); a size no integer stride
    # gives (15 -> 10) gets the stride that overshoots least, and candidates crop the rest
    for stride in range(1, in_size + 1):
        if math.ceil(in_size / stride) == out_size:
            return stride
    return max(1, in_size // out_size)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _default_input_shape(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))


def find_layers(model: nn.Module, input_shape: tuple[int, int, int] | None = None) -> list[Layer]:
    """Find the replaceable layers (blocks) of a CNN, in forward order.

    The model runs once, in eval mode and without gradients, on one random sample; every
    module's training mode is restored afterwards.

    Args:
        model: A timm CNN (or any network built from sequences of blocks).
        input_shape: ``(C, H, W)`` to trace at; defaults to the model's ``pretrained_cfg``
            input size, else ``(3, 224, 224)``. Shapes, strides and MACs are for this size.

    Returns:
        The layers, in the order the forward pass runs them.

    Raises:
        ValueError: If the model has no replaceable layer (a ViT, say).
    """
    input_shape = tuple(input_shape or _default_input_shape(model))
    traces = _trace(model, input_shape)
    found: list[str] = []

    def walk(name: str, module: nn.Module, in_container: bool) -> None:
        # the root is a container only if it is an nn.Sequential: a model's own children are
        # its stem, stages and head, not blocks
        container = _is_container(name, module, traces) if name else isinstance(module, nn.Sequential)
        if in_container and not container and _is_block(module, traces[name], input_shape):
            found.append(name)
            return
        if name and not container and traces[name].in_shape == input_shape:
            return  # a stem unit that reads the image: nothing inside it is a block either
        for child_name, child in module.named_children():
            walk(_join(name, child_name), child, container)

    walk("", model, False)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no replaceable layers: find_layers looks for blocks, "
            "modules with a Conv2d inside an nn.Sequential or a stage, that take one 4D tensor, "
            "return one and run once per forward. Supported kinds of blocks: "
            + "; ".join(SUPPORTED_KINDS)
            + ". Transformers (ViT and the like) have none."
        )
    layers = []
    for name in sorted(found, key=lambda n: traces[n].order):
        trace, module = traces[name], model.get_submodule(name)
        layers.append(
            Layer(
                name=name,
                kind=type(module).__name__,
                in_shape=trace.in_shape,
                out_shape=trace.out_shape,
                stride=_stride(trace.in_shape[1], trace.out_shape[1]),
                params=sum(p.numel() for p in module.parameters()),
                # every Conv2d / Linear below the block, each call counted
                macs=sum(t.macs for n, t in traces.items() if n.startswith(name + ".")),
            )
        )
    return layers


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The module at dotted path ``name`` (``layer2.0``, ``blocks.3.1``).

    Raises:
        KeyError: If there is no such module.
    """
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise KeyError(f"{type(model).__name__} has no module {name!r}") from None


def replace_layer(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` in place of the module at dotted path ``name``, in place.

    Works for named children and for indices of ``nn.Sequential`` / ``nn.ModuleList``.

    Args:
        model: The network, modified in place.
        name: Dotted path of the module to replace.
        module: Its replacement.

    Returns:
        The module that was replaced.

    Raises:
        KeyError: If there is no module at ``name``.
    """
    old = get_layer(model, name)
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    # setattr registers the new module under the same key, which is also how Sequential
    # and ModuleList store index "3", so iteration order is unchanged
    setattr(parent, child_name, module)
    return old


def describe_space(
    model_name: str, space: str = "default", img_size: int = 32, num_classes: int = 1000
) -> SpaceSummary:
    """Build a timm model (random weights) and summarise its candidate space.

    Backs ``lana candidates --model M --space P --img-size S``.

    Args:
        model_name: timm model name, e.g. ``efficientnet_b0``.
        space: Preset (``tiny``, ``default``, ``full``) or pattern list (see ``space_for``).
        img_size: Input height and width to trace at.
        num_classes: Classifier size (does not change the layers; passed so the model is the
            one the pipeline would build).

    Returns:
        The ``SpaceSummary``.
    """
    from lana.teacher import check_img_size, create_model  # deferred: only this function needs timm

    model = create_model(model_name, num_classes)
    check_img_size(model, img_size, model_name)
    in_chans = _default_input_shape(model)[0]
    layers = find_layers(model, (in_chans, img_size, img_size))
    rows = tuple(
        SpaceRow(layer, len(space_for(layer, space, teacher_block=get_layer(model, layer.name)))) for layer in layers
    )
    return SpaceSummary(model=model_name, space=space, img_size=img_size, rows=rows)
