"""Candidate spec strings: the one decoder (and its inverse) for the operation space.

A spec names one candidate operation the way timm's block strings name EfficientNet blocks
(``ir_r2_k3_s2_e6_c24_se0.25``, decoded by ``timm.models._efficientnet_builder._decode_block_str``):
a kind token, then ``_``-separated options. An option is either a key letter followed by a number
(``k5`` = kernel 5) or a bare flag (``se``, an activation name). Examples::

    teacher              the layer's original block, weights included
    id                   drop the layer (only where its input and output shapes match)
    ir_k5_e3_se          inverted residual (MobileNetV2/EfficientNet MBConv), kernel 5,
                         expansion 3, squeeze-excite, ReLU
    ir_k3_e6_se_hswish   the same family with hard-swish
    fir_k3_e4            fused inverted residual (EfficientNetV2 FusedMBConv)
    dw_k5                depthwise-separable conv (MobileNetV1)
    conv_k3              plain conv -> BN -> act
    basic_w0.5           ResNet basic block, inner width 0.5 x the layer's out channels
    bottleneck_w0.25     ResNet bottleneck, inner width 0.25 x the layer's out channels
    ir_k3_e6_lin         inverted residual without its depthwise activation (``lin``: one
                         non-linearity fewer); ``fir_k3_e4_lin`` drops the expansion's activation
    ghost_k3_r2_se       GhostNet bottleneck: ghost modules whose primary 1x1 conv makes 1/r of
                         the channels and a cheap kxk depthwise conv the rest, squeeze-excite
    rep_k3               RepVGG block: kxk + 1x1 + identity-BN branches, fused into one conv
    repdw_k3_silu        MobileOne-style depthwise-separable rep block, SiLU
    slim_w0.5            the teacher's own block with half its hidden channels, weights sliced
                         from the teacher (``lana.candidates.slim``); ``slim_k3`` crops its
                         k5/k7 depthwise kernel to 3x3, ``slim_w0.5_k3`` does both

Specs are what the plan JSON and the library file store, so decoding must be strict: a value
outside the registered grid is an error rather than a silently different module.
"""

from __future__ import annotations

import dataclasses
import itertools

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_ACTIVATION",
    "KINDS",
    "KindInfo",
    "decode_spec",
    "encode_spec",
    "registered_specs",
]

ACTIVATIONS = ("relu", "silu", "hswish")
# ReLU is the default because it is the cheapest activation on every backend we time; a spec
# names another activation only when it differs (``ir_k3_e6`` is ReLU, ``ir_k3_e6_silu`` is not).
DEFAULT_ACTIVATION = "relu"

# key letter -> (argument name, description used in error messages)
_KEY_NAMES = {
    "k": ("kernel_size", "kernel"),
    "e": ("expansion", "expansion"),
    "w": ("width", "width"),
    "r": ("ratio", "ghost ratio"),
}
# keys whose values are whole numbers (the others, like width 0.5, stay floats)
_INT_KEYS = ("k", "e", "r")


@dataclasses.dataclass(frozen=True)
class KindInfo:
    """What a kind of candidate accepts.

    Attributes:
        description: One line for listings and error messages.
        keys: Key letter -> allowed values, in canonical order (all keys are required).
        se: Whether the ``se`` flag (squeeze-excite) is accepted.
        act: Whether an activation flag is accepted.
        lin: Whether the ``lin`` flag (drop the block's inner activation) is accepted.
        optional: Whether keys may be left out (at least one must be given); an absent key is
            absent from the decoded args.
        unlisted: Key letter -> extra values that decode but are not in the registered grid
            (``slim_w1``: the uncut teacher through the slicing path, for tests).
        teacher_derived: Built from the teacher's block rather than from the layer's shapes,
            so it exists per block: ``registered_specs()`` leaves it out (and with it every
            preset), ``registered_specs(kind)`` and patterns naming the kind list it.
    """

    description: str
    keys: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    se: bool = False
    act: bool = False
    lin: bool = False
    optional: bool = False
    unlisted: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    teacher_derived: bool = False


KINDS: dict[str, KindInfo] = {
    "teacher": KindInfo("the layer's original block"),
    "id": KindInfo("identity: drop the layer"),
    "ir": KindInfo(
        "inverted residual (MBConv)",
        {"k": (3, 5, 7), "e": (1, 2, 3, 4, 6)},
        se=True,
        act=True,
        lin=True,
    ),
    "fir": KindInfo(
        "fused inverted residual (FusedMBConv)",
        {"k": (3, 5), "e": (1, 2, 4)},
        se=True,
        act=True,
        lin=True,
    ),
    "dw": KindInfo("depthwise-separable conv", {"k": (3, 5)}, se=True, act=True),
    "conv": KindInfo("plain conv-BN-act", {"k": (1, 3)}, se=True, act=True),
    "basic": KindInfo("ResNet basic block", {"w": (0.25, 0.5, 1)}, se=True, act=True),
    "bottleneck": KindInfo("ResNet bottleneck", {"w": (0.25, 0.5)}, se=True, act=True),
    # GhostNet uses ReLU throughout, so no activation flag: 2 kernels x 2 ratios x SE = 8 specs
    "ghost": KindInfo("ghost bottleneck (GhostNet)", {"k": (3, 5), "r": (2, 4)}, se=True),
    # one kernel: RepVGG's 3x3 (a 5x5 rep conv costs 2.8x more and RepVGG/MobileOne never use it)
    "rep": KindInfo("RepVGG block, fused into one conv for inference", {"k": (3,)}, act=True),
    "repdw": KindInfo("MobileOne-style depthwise-separable rep block, fused for inference", {"k": (3,)}, act=True),
    # the teacher's block cut to a width (once-for-all's elastic width) and/or its k5/k7
    # depthwise kernel cropped to 3 (elastic kernel): 5 widths x (k kept, k3) + k3 alone = 11
    "slim": KindInfo(
        "the teacher's block with its hidden channels cut (weights sliced from the teacher)",
        {"w": (0.875, 0.75, 0.5, 0.375, 0.25), "k": (3,)},
        optional=True,
        unlisted={"w": (1.0,)},
        teacher_derived=True,
    ),
}


def _format_number(value: float) -> str:
    return f"{value:g}"


def _flags_help(info: KindInfo) -> str:
    flags = (["se"] if info.se else []) + (list(ACTIVATIONS) if info.act else [])
    flags += ["lin"] if info.lin else []
    return ", ".join(flags) if flags else "none"


def _keys_help(info: KindInfo) -> str:
    if not info.keys:
        return "none"
    return ", ".join(f"{key} ({_KEY_NAMES[key][1]})" for key in info.keys)


def _parse_value(spec: str, key: str, text: str, allowed: tuple[float, ...], unlisted: tuple[float, ...] = ()) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in allowed + unlisted:
        allowed_text = ", ".join(_format_number(v) for v in allowed)
        raise ValueError(f"bad value {text!r} for {key} ({_KEY_NAMES[key][1]}) in {spec!r}; allowed: {allowed_text}")
    return int(value) if key in _INT_KEYS else value


def decode_spec(spec: str) -> tuple[str, dict]:
    """Decode a candidate spec string into its kind and arguments.

    The single decoder of the project: the builder, the space presets and the cost model all
    go through it. Options may come in any order; defaults are filled in, so two spellings of
    the same candidate decode to the same arguments (see ``encode_spec`` for the canonical one).

    Args:
        spec: A spec such as ``"ir_k5_e3_se"``, ``"dw_k3_silu"``, ``"basic_w0.5"``, ``"id"``.

    Returns:
        ``(kind, args)``. ``args`` holds ``kernel_size`` / ``expansion`` / ``width`` / ``ratio``
        for the kinds that take them, ``se`` (bool) where squeeze-excite is allowed and ``act``
        (one of ``ACTIVATIONS``) where an activation is, and ``lin=True`` only when the ``lin``
        flag is given (absent otherwise, so the args of specs older than the flag are
        unchanged); ``teacher`` and ``id`` have empty args, ``slim`` only the keys given
        (``slim_k3`` -> ``{"kernel_size": 3}``).

    Raises:
        ValueError: On an unknown kind, key or flag, a value outside the registered grid, a
            repeated option or a missing key; the message lists what is allowed.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a candidate spec must be a non-empty string, got {spec!r}")
    kind, *options = spec.split("_")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} in {spec!r}; kinds are {', '.join(KINDS)}")
    info = KINDS[kind]
    if options and not (info.keys or info.se or info.act or info.lin):
        raise ValueError(f"{kind!r} takes no options, got {spec!r}")
    given: dict = {}  # slot (key letter, "se" or "act") -> value
    for option in options:
        slot, value = _decode_option(spec, info, option)
        if slot in given:
            what = {"se": "se", "act": "an activation", "lin": "lin"}.get(slot, f"key {slot!r}")
            raise ValueError(f"{what} given twice in {spec!r}")
        given[slot] = value
    missing = [key for key in info.keys if key not in given]
    if info.optional and len(missing) == len(info.keys):
        raise ValueError(f"{spec!r} needs at least one of {_keys_help(info)}; e.g. {registered_specs(kind)[0]!r}")
    if missing and not info.optional:
        raise ValueError(
            f"{spec!r} lacks {', '.join(f'{k} ({_KEY_NAMES[k][1]})' for k in missing)}; "
            f"e.g. {registered_specs(kind)[0]!r}"
        )
    args = {_KEY_NAMES[key][0]: given[key] for key in info.keys if key in given}
    if info.se:
        args["se"] = given.get("se", False)
    if info.act:
        args["act"] = given.get("act", DEFAULT_ACTIVATION)
    if given.get("lin"):
        args["lin"] = True
    return kind, args


def _decode_option(spec: str, info: KindInfo, option: str) -> tuple[str, object]:
    """One ``_``-separated option: ``("se", True)``, ``("act", "silu")`` or ``("k", 5)``."""
    if not option:
        raise ValueError(f"empty option (doubled or trailing '_') in {spec!r}")
    if option == "se" and info.se:
        return "se", True
    if option in ACTIVATIONS and info.act:
        return "act", option
    if option == "lin" and info.lin:
        return "lin", True
    key, value = option[:1], option[1:]
    if key not in info.keys:
        # a whole word (``gelu``, ``se`` on a kind without it) reads better as a flag
        what, bad = ("flag", option) if option.isalpha() and len(option) > 1 else ("key", key)
        raise ValueError(
            f"unknown {what} {bad!r} in {spec!r}; keys are {_keys_help(info)}; flags are {_flags_help(info)}"
        )
    if not value:
        allowed = ", ".join(_format_number(v) for v in info.keys[key])
        raise ValueError(f"key {key!r} in {spec!r} has no value; allowed: {allowed}")
    return key, _parse_value(spec, key, value, info.keys[key], info.unlisted.get(key, ()))


def encode_spec(kind: str, args: dict) -> str:
    """The canonical spec string of ``(kind, args)``: keys in registry order, ``se`` next,
    the activation only when it is not the default, ``lin`` last. Inverse of ``decode_spec``."""
    info = KINDS[kind]
    parts = [kind]
    parts += [f"{key}{_format_number(args[_KEY_NAMES[key][0]])}" for key in info.keys if _KEY_NAMES[key][0] in args]
    if info.se and args.get("se"):
        parts.append("se")
    if info.act and args.get("act", DEFAULT_ACTIVATION) != DEFAULT_ACTIVATION:
        parts.append(args["act"])
    if info.lin and args.get("lin"):
        parts.append("lin")
    return "_".join(parts)


def registered_specs(kind: str | None = None) -> list[str]:
    """Every spec of the registered grid (of one kind, or of all), in canonical spelling.

    Each kind contributes the product of its key values, with and without ``se`` where allowed,
    times every activation where allowed, with and without ``lin`` where allowed: e.g. ``ir``
    gives 3 kernels x 5 expansions x 2 x 3 x 2 = 180, and all kinds together 322. A kind with
    optional keys also has each key absent (but not all at once): ``slim`` gives 9. Teacher-derived
    kinds (``slim``) come only when asked for by name: they exist per teacher block.
    """
    specs = []
    for name, info in KINDS.items():
        if (kind is not None and name != kind) or (kind is None and info.teacher_derived):
            continue
        if info.optional:  # None: the key is left out
            value_grid = itertools.product(*((None, *values) for values in info.keys.values()))
            value_grid = (values for values in value_grid if any(v is not None for v in values))
        else:
            value_grid = itertools.product(*info.keys.values())
        for values, se, act, lin in itertools.product(
            value_grid,
            (False, True) if info.se else (False,),
            ACTIVATIONS if info.act else (None,),
            (False, True) if info.lin else (False,),
        ):
            args = {_KEY_NAMES[key][0]: v for key, v in zip(info.keys, values, strict=True) if v is not None}
            args.update({"se": se, "act": act, "lin": lin} if act else {"se": se})
            specs.append(encode_spec(name, args))
    return specs
