"""Tests for lana.candidates: spec decoding, the builder, costs and the space presets."""

from __future__ import annotations

import dataclasses
import io
import warnings

import pytest
import torch
from helpers import IMG, one_thread, timm_model  # noqa: F401  (one_thread: autouse fixture)
from torch import nn

from lana.candidates import (
    Candidate,
    build_candidate,
    count_params_macs,
    decode_spec,
    encode_spec,
    estimate_cost,
    list_candidates,
    plan_candidate,
    space_for,
)
from lana.layers import Layer, get_layer, replace_layer

MODELS = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "efficientnet_b0",
    "efficientnet_b2",
    "tf_efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "regnetx_002",
    "convnext_atto",
]

# Synthetic layers (MACs huge so that no candidate is filtered out by cost).
DOWN = Layer("down", "X", (16, 9, 9), (24, 5, 5), 2, 1, 10**12)
KEEP = Layer("keep", "X", (24, 8, 8), (24, 8, 8), 1, 1, 10**12)
ODD = Layer("odd", "X", (8, 15, 15), (16, 10, 10), 1, 1, 10**12)  # no integer stride gives 10


# ---- decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("ir_k5_e3_se", ("ir", {"kernel_size": 5, "expansion": 3, "se": True, "act": "relu"})),
        (
            "ir_k3_e6_se_hswish",
            ("ir", {"kernel_size": 3, "expansion": 6, "se": True, "act": "hswish"}),
        ),
        ("fir_k3_e4", ("fir", {"kernel_size": 3, "expansion": 4, "se": False, "act": "relu"})),
        ("dw_k5", ("dw", {"kernel_size": 5, "se": False, "act": "relu"})),
        ("conv_k3", ("conv", {"kernel_size": 3, "se": False, "act": "relu"})),
        ("basic_w0.5", ("basic", {"width": 0.5, "se": False, "act": "relu"})),
        ("bottleneck_w0.25", ("bottleneck", {"width": 0.25, "se": False, "act": "relu"})),
        ("id", ("id", {})),
        ("teacher", ("teacher", {})),
        ("ir_silu_e3_k5", ("ir", {"kernel_size": 5, "expansion": 3, "se": False, "act": "silu"})),
    ],
)
def test_decode_spec_fills_defaults(spec, expected):
    assert decode_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "ir_q3",
            "unknown key 'q' in 'ir_q3'; keys are k (kernel), e (expansion); flags are se, relu",
        ),
        ("ir_k4_e3", "bad value '4' for k (kernel) in 'ir_k4_e3'; allowed: 3, 5, 7"),
        ("basic_w0.75", "allowed: 0.25, 0.5, 1"),
        (
            "foo_k3",
            "unknown kind 'foo' in 'foo_k3'; kinds are teacher, id, ir, fir, dw, conv, basic",
        ),
        ("ir_k3", "'ir_k3' lacks e (expansion)"),
        ("ir_k3_e6_gelu", "unknown flag 'gelu'"),
        ("id_k3", "'id' takes no options"),
        ("ir_k3_k5_e1", "given twice"),
        ("ir_k3_e6_", "empty option"),
        ("", "non-empty string"),
    ],
)
def test_decode_spec_errors_say_what_is_allowed(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_spec(spec)


def test_every_registered_spec_round_trips_through_encode():
    for spec in list_candidates():
        assert encode_spec(*decode_spec(spec)) == spec


# ---- registry and spaces ---------------------------------------------------------------------


def test_list_candidates_is_sorted_and_matches_like_fnmatch():
    specs = list_candidates()
    assert specs == sorted(specs) and len(specs) == len(set(specs)) == 322
    assert len(list_candidates("ir_*")) == 3 * 5 * 2 * 3 * 2  # kernel, expansion, se, act, lin
    assert len(list_candidates("fir_*")) == 2 * 3 * 2 * 3 * 2
    assert list_candidates("dw_k3*") == [
        "dw_k3",
        "dw_k3_hswish",
        "dw_k3_se",
        "dw_k3_se_hswish",
        "dw_k3_se_silu",
        "dw_k3_silu",
    ]
    assert list_candidates("nothing*") == []


def test_space_for_puts_teacher_first_and_id_only_where_shapes_match():
    for space in ("tiny", "default", "full"):
        assert space_for(KEEP, space)[:2] == ["teacher", "id"]
        down = space_for(DOWN, space)
        assert down[0] == "teacher" and "id" not in down


def test_preset_sizes():
    assert 5 <= len(space_for(KEEP, "tiny")) <= 6
    assert 35 <= len(space_for(KEEP, "default")) <= 45
    assert len(space_for(KEEP, "full")) == 322


def test_full_space_has_at_least_150_candidates_on_typical_layers():
    for model_name, layer_name in [("efficientnet_b0", "blocks.2.1"), ("resnet18", "layer2.1")]:
        _, layers = timm_model(model_name)
        layer = next(layer for layer in layers if layer.name == layer_name)
        assert len(space_for(layer, "full")) >= 150


def test_pattern_space_selects_matching_specs():
    specs = space_for(KEEP, "ir_k3_*,dw_*, id")
    assert specs[:2] == ["teacher", "id"]
    assert set(specs[2:]) == set(list_candidates("ir_k3_*") + list_candidates("dw_*"))
    # exact specs in any option order are canonicalised
    assert space_for(DOWN, "ir_e3_k5_se") == ["teacher", "ir_k5_e3_se"]


@pytest.mark.parametrize(
    "space, message",
    [("defualt", "unknown kind"), ("ir_k9_*", "matches no"), (" , ", "empty space")],
)
def test_bad_space_raises(space, message):
    with pytest.raises(ValueError, match=message):
        space_for(KEEP, space)


def test_space_drops_candidates_over_the_macs_ratio_but_keeps_teacher_and_id():
    cheap = dataclasses.replace(KEEP, macs=20_000)
    specs = space_for(cheap, "full")
    assert specs[:2] == ["teacher", "id"] and 2 < len(specs) < 322
    assert all(estimate_cost(spec, cheap).macs <= 2 * cheap.macs for spec in specs[2:])
    tiny_budget = space_for(dataclasses.replace(KEEP, macs=1), "full")
    assert tiny_budget == ["teacher", "id"]
    assert len(space_for(cheap, "full", max_macs_ratio=None)) == 322


# ---- costs -----------------------------------------------------------------------------------


def test_count_params_macs_counts_grouped_convs_and_linears():
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    assert count_params_macs(depthwise, (8, 5, 5)) == (8 * 9, 8 * 9 * 25)
    grouped = nn.Conv2d(8, 16, 1, stride=2, groups=4)
    assert count_params_macs(grouped, (8, 6, 6)) == (16 * 2 + 16, 16 * 2 * 9)
    linear = nn.Linear(10, 3)
    assert count_params_macs(linear, (10,)) == (33, 30)


def test_count_params_macs_restores_training_mode():
    block = build_candidate("ir_k3_e2", KEEP).train()
    count_params_macs(block, KEEP.in_shape)
    assert block.training


@pytest.mark.parametrize("layer", [DOWN, KEEP, ODD], ids=lambda layer: layer.name)
def test_estimate_cost_equals_counting_the_built_module(layer):
    for spec in list_candidates():
        if spec in ("teacher", "id"):
            continue
        torch.manual_seed(0)
        block = build_candidate(spec, layer)
        assert estimate_cost(spec, layer) == Candidate(spec, *count_params_macs(block, layer.in_shape))


def test_estimate_cost_of_teacher_and_id():
    assert estimate_cost("teacher", KEEP) == Candidate("teacher", KEEP.params, KEEP.macs)
    assert estimate_cost("id", KEEP) == Candidate("id", 0, 0)


# ---- builder ---------------------------------------------------------------------------------


def test_id_refuses_a_layer_that_changes_shape():
    with pytest.raises(ValueError, match=r"'id' cannot replace layer down: its input \(16, 9, 9\)"):
        build_candidate("id", DOWN)
    assert isinstance(build_candidate("id", KEEP), nn.Identity)


def test_teacher_needs_the_teacher_block():
    with pytest.raises(ValueError, match="teacher_block"):
        build_candidate("teacher", KEEP)


def test_odd_downsampling_is_cropped_to_the_layer_output():
    assert plan_candidate("ir_k3_e2", ODD).crop_to == (10, 10)
    out = build_candidate("basic_w0.5", ODD)(torch.randn(2, *ODD.in_shape))
    assert out.shape == (2, *ODD.out_shape)


def test_a_stride_that_undershoots_the_output_is_refused():
    with pytest.raises(ValueError, match="smaller than its output"):
        build_candidate("conv_k3", dataclasses.replace(ODD, stride=2))


def test_building_is_deterministic_given_the_seed():
    torch.manual_seed(3)
    first = build_candidate("ir_k5_e3_se_silu", DOWN).state_dict()
    torch.manual_seed(3)
    second = build_candidate("ir_k5_e3_se_silu", DOWN).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("kind", ["ir", "fir", "dw", "basic", "bottleneck"])
def test_shape_preserving_residual_candidates_start_as_identity(kind):
    x = torch.randn(2, *KEEP.in_shape)
    for spec in list_candidates(f"{kind}_*"):
        block = build_candidate(spec, KEEP)
        for mode in (False, True):
            block.train(mode)
            with torch.no_grad():
                assert torch.equal(block(x), x), (spec, mode)


def test_plain_conv_is_not_residual_and_downsampling_blocks_project():
    assert not plan_candidate("conv_k3", KEEP).residual
    assert plan_candidate("basic_w1", DOWN).projection
    assert not plan_candidate("ir_k3_e6", DOWN).residual  # MobileNetV2: no skip when shapes change


@pytest.mark.parametrize(
    "spec",
    [
        "ir_k3_e6_se_hswish",
        "fir_k5_e2_silu",
        "dw_k3_se",
        "conv_k1",
        "basic_w0.5_se",
        "bottleneck_w0.25",
    ],
)
@pytest.mark.parametrize("layer", [DOWN, KEEP, ODD], ids=lambda layer: layer.name)
def test_candidates_export_to_torchscript_and_onnx(spec, layer):
    torch.manual_seed(0)
    block = build_candidate(spec, layer).eval()
    for module in block.modules():  # non-trivial BN so that exported graphs are really compared
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
    x = torch.randn(2, *layer.in_shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent torch
        expected = block(x)
        assert torch.allclose(torch.jit.script(block)(x), expected, atol=1e-6)
        onnxruntime = pytest.importorskip("onnxruntime")
        buffer = io.BytesIO()
        torch.onnx.export(block, (x,), buffer, dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue())
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(out), expected, atol=1e-5)


# ---- every default spec on every layer of every model ---------------------------------------


@pytest.mark.parametrize("model_name", MODELS)
def test_every_default_candidate_fits_every_layer(model_name):
    """Each spec of the default preset, built for each layer at 64 px, maps a random input of the
    layer's shape to the layer's output shape with finite values, in eval and in train mode; the
    teacher candidate reproduces the teacher block exactly."""
    model, layers = timm_model(model_name)
    torch.manual_seed(0)
    for layer in layers:
        teacher = get_layer(model, layer.name)
        x = torch.randn(2, *layer.in_shape)
        with torch.no_grad():
            reference = teacher(x)
            for spec in space_for(layer, "default"):
                block = build_candidate(spec, layer, teacher_block=teacher)
                if spec == "teacher":
                    assert block is not teacher and torch.equal(block(x), reference)
                for mode in (False, True):
                    out = block.train(mode)(x)
                    assert out.shape == (2, *layer.out_shape), (layer.name, spec, mode)
                    assert torch.isfinite(out).all(), (layer.name, spec, mode)


@pytest.mark.parametrize("model_name", ["resnet18", "efficientnet_b0", "regnetx_002", "convnext_atto"])
def test_replacing_layers_with_candidates_keeps_the_model_output_shape(model_name):
    import copy

    model, layers = timm_model(model_name)
    student = copy.deepcopy(model)
    torch.manual_seed(0)
    for index, layer in enumerate(layers):
        specs = space_for(layer, "tiny")
        replace_layer(
            student,
            layer.name,
            build_candidate(specs[index % len(specs)], layer, get_layer(model, layer.name)),
        )
    with torch.no_grad():
        out = student.eval()(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_space_drops_kernels_larger_than_the_feature_map_can_use():
    from lana.layers import Layer

    tiny_map = Layer("x", "BasicBlock", (256, 2, 2), (256, 2, 2), 1, 1_180_000, 4_720_000)
    specs = space_for(tiny_map, "ir_k3_e2,ir_k5_e2,ir_k7_e2,dw_k3,dw_k5")
    assert "ir_k3_e2" in specs and "dw_k3" in specs
    assert not {"ir_k5_e2", "ir_k7_e2", "dw_k5"} & set(specs)  # a 2x2 map: k3 already sees all of it
    big_map = Layer("y", "BasicBlock", (64, 8, 8), (64, 8, 8), 1, 74_000, 4_720_000)
    assert {"ir_k5_e2", "ir_k7_e2"} <= set(space_for(big_map, "ir_k3_e2,ir_k5_e2,ir_k7_e2"))
