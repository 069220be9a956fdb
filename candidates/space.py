"""The operation space: the registry of specs, the presets, and the specs that fit one layer.

``list_candidates`` is the registry (like ``timm.list_models``); ``space_for`` picks, for one
layer, the specs of a preset (``tiny``, ``default``, ``full``) or of a comma-separated pattern list.
"""

from __future__ import annotations

import fnmatch
import functools
from typing import TYPE_CHECKING

from .count import estimate_cost
from .quant import int8_spec
from .spec import KINDS, decode_spec, encode_spec, registered_specs

if TYPE_CHECKING:
    from lana.layers import Layer

__all__ = ["DEFAULT_MAX_MACS_RATIO", "PRESETS", "list_candidates", "list_spaces", "space_for"]

# Patterns per preset, over the registered specs. ``teacher`` and ``id`` are added by space_for.
PRESETS: dict[str, tuple[str, ...]] = {
    # one cheap candidate per family: enough to exercise every code path in seconds
    "tiny": ("ir_k3_e1", "dw_k3", "conv_k3", "basic_w0.25"),
    # 41 + teacher + id: every kernel x expansion of the inverted residual with ReLU but the two
    # e=1 ones with large kernels (13: ir_k5_e1 and ir_k7_e1 sit between dw_k5 and ir_k3_e1, and
    # ghost_k5_r4 now covers that cheap corner), two without the depthwise activation (2), the
    # SE/SiLU variants EfficientNet teachers use (4), hard-swish as in MobileNetV3 (2), fused IR
    # without the costliest k5_e4 (5), depthwise-separable (4), plain convs (2), ResNet blocks
    # (5), GhostNet's standard k3_r2 and its cheapest k5_r4 (2), the two rep blocks (2)
    "default": (
        "ir_k3_e1",
        "ir_k?_e[2346]",
        "ir_k3_e[36]_lin",
        "ir_k[35]_e[36]_se_silu",
        "ir_k3_e[36]_hswish",
        "fir_k3_e?",
        "fir_k5_e[12]",
        "dw_k?",
        "dw_k3_se",
        "dw_k5_silu",
        "conv_k?",
        "basic_w0.25",
        "basic_w0.5",
        "basic_w1",
        "bottleneck_w0.25",
        "bottleneck_w0.5",
        "ghost_k3_r2",
        "ghost_k5_r4",
        "rep_k3",
        "repdw_k3",
        "slim_*",
    ),
    # the cheap end of every family (11 + teacher + id): the demo's space plus one `_lin` block;
    # what the benchmark (bench/) can distil on a 2-core CPU within an hour
    "compact": (
        "ir_k3_e2",
        "ir_k3_e3",
        "ir_k3_e3_lin",
        "fir_k3_e1",
        "dw_k3",
        "conv_k3",
        "basic_w0.25",
        "basic_w0.5",
        "bottleneck_w0.25",
        "ghost_k3_r2",
        "rep_k3",
        "repdw_k3",
        "slim_*",
    ),
    # every registered combination of kernel, expansion/width/ratio, SE, activation and lin
    # (320 + 2)
    "full": ("*",),
}

# A candidate with more than twice the teacher block's MACs at a layer is dropped: the ILP picks
# candidates to go faster than the teacher, so one that costs far more can only win on accuracy,
# where the teacher itself is already the reference. Such candidates also dominate the time and
# memory of distillation (an ir_k7_e6 in ResNet-50's last stage has 10x its bottleneck's weights).
DEFAULT_MAX_MACS_RATIO = 2.0


def list_candidates(pattern: str = "*") -> list[str]:
    """All registered candidate specs matching ``pattern`` (fnmatch), sorted.

    Teacher-derived specs (``slim_*``) exist per teacher block, so they are listed only by a
    pattern that starts with their kind (``"slim_*"``, ``"slim_w0.5*"``), never by ``"*"``, and no
    preset holds them (``lana.candidates.slim.slim_specs`` gives those of one block).

    Args:
        pattern: A shell-style pattern, e.g. ``"ir_*"``, ``"*_se*"``, ``"basic_w?.5"``.

    Returns:
        The matching specs in canonical spelling, sorted.
    """
    specs = registered_specs()
    for kind, info in KINDS.items():
        if info.teacher_derived and pattern.startswith(kind):
            specs += registered_specs(kind)
    return sorted(fnmatch.filter(specs, pattern))


def list_spaces() -> list[str]:
    """Names of the preset spaces."""
    return list(PRESETS)


def _is_teacher_derived(pattern: str) -> bool:
    return any(info.teacher_derived and pattern.startswith(kind) for kind, info in KINDS.items())


def _derived_patterns(space: str) -> tuple[str, ...]:
    """The patterns of a space that name teacher-derived specs (``slim_*``, ``slim_w0.5``)."""
    patterns = PRESETS.get(space) or tuple(p.strip() for p in space.split(",") if p.strip())
    return tuple(p for p in patterns if _is_teacher_derived(p))


@functools.lru_cache(maxsize=64)
def _resolve(space: str) -> tuple[str, ...]:
    """Specs (registry order) named by a preset or a comma-separated list of patterns."""
    patterns = PRESETS.get(space) or tuple(p.strip() for p in space.split(",") if p.strip())
    if not patterns:
        raise ValueError(f"empty space {space!r}; presets are {', '.join(PRESETS)}")
    registry = registered_specs()
    chosen: set[str] = set()
    for pattern in patterns:
        if _is_teacher_derived(pattern):  # cut from the teacher's block: space_for adds them per block
            continue
        if not any(ch in pattern for ch in "*?["):
            # an exact spec: decode it so a typo gets the decoder's message and any option
            # order (ir_e3_k5) maps to the canonical spelling
            try:
                chosen.add(encode_spec(*decode_spec(pattern)))
            except ValueError as error:
                raise ValueError(
                    f"{error}; a space is a preset ({', '.join(PRESETS)}) or comma-separated specs and patterns"
                ) from None
            continue
        matched = fnmatch.filter(registry, pattern)
        if not matched:
            raise ValueError(
                f"pattern {pattern!r} in space {space!r} matches no candidate; presets are "
                f"{', '.join(PRESETS)}, or patterns over list_candidates() such as 'ir_k3_*,dw_*'"
            )
        chosen.update(matched)
    return tuple(spec for spec in registry if spec in chosen)


def space_for(
    layer: Layer,
    space: str = "default",
    max_macs_ratio: float | None = DEFAULT_MAX_MACS_RATIO,
    int8: bool = False,
    teacher_block=None,
) -> list[str]:
    """The candidate specs of ``space`` that fit ``layer``.

    The result always starts with ``teacher``, then ``id`` where the layer keeps its shape,
    then the space's other specs in registry order (by family); with ``int8``, the int8 twins
    of all these but ``id`` follow, in the same order (``teacher_int8``, ...).

    Args:
        layer: The layer (``in_shape``, ``out_shape``, ``stride``, ``macs``).
        space: A preset (``tiny``, ``default``, ``full``) or comma-separated fnmatch patterns
            and specs, e.g. ``"ir_k3_*,dw_*,id"`` (``ir_k3_*`` includes the ``_lin`` variants;
            ``ir_k3_e?`` does not).
        max_macs_ratio: Drop candidates whose MACs at this layer exceed this multiple of the
            teacher block's (see ``DEFAULT_MAX_MACS_RATIO`` for why); None keeps all.
            ``teacher`` and ``id`` are never dropped.
        int8: Add each float candidate's int8 twin (``lana.candidates.quant``; CPU only), so
            that the ILP can choose the precision per layer.
        teacher_block: The teacher's block at the layer: the space's teacher-derived specs
            (``slim_*``, in ``compact`` and ``default``) are cut from it, so without it they are
            left out.

    Returns:
        The specs.

    Raises:
        ValueError: On an unknown preset, a pattern that matches nothing or an invalid spec.
    """
    fits_id = tuple(layer.in_shape) == tuple(layer.out_shape)
    specs = ["teacher"] + (["id"] if fits_id else [])
    budget = None
    if max_macs_ratio is not None and layer.macs > 0:
        budget = max_macs_ratio * layer.macs
    seen = set()
    for spec in sorted(_resolve(space), key=_kernel_of):  # smallest kernel first: it is the one kept
        if spec in ("teacher", "id"):
            continue
        if budget is not None and estimate_cost(spec, layer).macs > budget:
            continue
        effective = _effective_spec(spec, layer)
        if effective in seen:
            continue
        seen.add(effective)
        specs.append(spec)
    order = {spec: i for i, spec in enumerate(_resolve(space))}
    specs = specs[: 1 + fits_id] + sorted(specs[1 + fits_id :], key=order.get)
    if teacher_block is not None:
        specs += _derived_specs(layer, space, teacher_block)
    if int8:
        specs += [int8_spec(spec) for spec in specs if spec != "id"]
    return specs


def _derived_specs(layer: Layer, space: str, teacher_block) -> list[str]:
    """The block's slim specs that the space's patterns name; on maps of 2x2 or less, where a
    k5/k7 kernel sees what a k3 sees (``_effective_spec``), without the ``_k3`` variants."""
    from .slim import slim_specs

    patterns = _derived_patterns(space)
    if not patterns:
        return []
    tiny_map = 2 * max(layer.in_shape[1:]) - 1 <= 3
    out = []
    for spec in slim_specs(layer, teacher_block):
        if tiny_map and decode_spec(spec)[1].get("kernel_size"):
            continue
        if any(fnmatch.fnmatchcase(spec, p) for p in patterns):
            out.append(spec)
    return out


def _kernel_of(spec: str) -> int:
    try:
        return int(decode_spec(spec)[1].get("kernel_size", 0))
    except ValueError:
        return 0


def _effective_spec(spec: str, layer: Layer) -> str:
    """The spec with its kernel clipped to what the layer's feature map can use.

    A k x k kernel with "same" padding on an H x W map with k >= 2 * max(H, W) - 1 already sees
    every pixel from every position: larger kernels only add taps on the zero padding, so they
    span the same functions at more cost. At 32 px, resnet18's last layers see 2x2 and 1x1 maps,
    where k5 and k7 duplicate k3 (and cost up to 5x its training time on a CPU).
    """
    kind, args = decode_spec(spec)
    if "kernel_size" not in args:
        return spec
    reach = 2 * max(layer.in_shape[1:]) - 1
    args = {**args, "kernel_size": min(args["kernel_size"], max(reach, 1))}
    return f"{kind}:{sorted(args.items())}"
