"""Tests for the teacher-derived ``slim_*`` family (issue 14): cut, shapes, rounding, reload."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from helpers import one_thread, timm_model  # noqa: F401  (one_thread: autouse fixture)
from safetensors.torch import load, save
from torch import nn

from lana.candidates import (
    Candidate,
    build_candidate,
    count_params_macs,
    decode_spec,
    encode_spec,
    estimate_cost,
    list_candidates,
    slim_channels,
    slim_specs,
    space_for,
)
from lana.layers import get_layer

IMG = 32
# every block kind with a slim recipe, on 13 families: ResNet basic / bottleneck / ResNeXt
# (grouped), EfficientNet / MobileNet / MnasNet inverted residuals (SE, hard-swish, k5), EdgeResidual,
# RegNet X / Y (grouped, SE), ConvNeXt (LayerNorm, k7), GhostNet, LCNet (depthwise-separable, k5)
FAMILIES = [
    "resnet18",
    "resnet26",
    "seresnext26d_32x4d",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_small_100",
    "mnasnet_100",
    "efficientnetv2_rw_t",
    "regnetx_002",
    "regnety_002",
    "convnext_atto",
    "ghostnet_100",
    "lcnet_050",
]
KINDS_COVERED = {
    "BasicBlock",
    "Bottleneck",
    "InvertedResidual",
    "EdgeResidual",
    "DepthwiseSeparableConv",
    "ConvNeXtBlock",
    "GhostBottleneck",
}
SHORTCUTS = ("downsample.", "shortcut.")


def _randomise(block: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BN scales, shifts and statistics and layer scales: timm zero-inits the last BN
    of a ResNet block and ConvNeXt's gamma is 1e-6, which would hide the body from the checks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        for name, parameter in block.named_parameters():
            if name.endswith("gamma"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return block.eval()


def _blocks(model_name: str):
    """(layer, randomised copy of its teacher block) for every layer of the family at 32 px."""
    model, layers = timm_model(model_name, IMG)
    return [(layer, _randomise(copy.deepcopy(get_layer(model, layer.name)))) for layer in layers]


def _input(layer, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, *layer.in_shape, generator=torch.Generator().manual_seed(seed))


def _covered(block: nn.Module) -> bool:
    try:
        return bool(slim_channels("slim_w1", block))
    except ValueError:
        return False


# ---- the cut -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", FAMILIES)
def test_slim_w1_is_the_teacher_block_with_its_channels_permuted(model_name):
    covered = 0
    for layer, block in _blocks(model_name):
        if not _covered(block):
            continue
        covered += 1
        slim = build_candidate("slim_w1", layer, teacher_block=block)
        x = _input(layer)
        with torch.no_grad():
            torch.testing.assert_close(slim(x), block(x), atol=1e-5, rtol=1e-5)
        # the slicing path ran: importance order is not the teacher's order
        teacher, cut = block.state_dict(), slim.state_dict()
        assert teacher.keys() == cut.keys()
        assert any(not torch.equal(teacher[k], cut[k]) for k in teacher), layer.name
    assert covered or model_name == "lcnet_050"  # LCNet has depthwise-separable blocks only


@pytest.mark.parametrize("model_name", FAMILIES)
def test_every_slim_spec_keeps_shapes_and_rounds_hidden_channels_to_eight(model_name):
    for layer, block in _blocks(model_name):
        full = slim_channels("slim_w1", block) if _covered(block) else {}
        x = _input(layer)
        for spec in slim_specs(layer, block):
            slim = build_candidate(spec, layer, teacher_block=block)
            with torch.no_grad():
                assert slim(x).shape == (2, *layer.out_shape), (layer.name, spec)
            kept = slim_channels(spec, block)
            assert kept.keys() == full.keys()
            for name, count in kept.items():
                assert count % 8 == 0 or count == full[name], (layer.name, spec, kept)
                module = slim.get_submodule(name)
                assert getattr(module, "out_channels", getattr(module, "out_features", None)) == count
            if decode_spec(spec)[1].get("width", 1) < 1:
                assert kept != full and sum(p.numel() for p in slim.parameters()) < layer.params
            # stride and shortcut are the teacher's, weights included
            teacher, cut = block.state_dict(), slim.state_dict()
            assert teacher.keys() == cut.keys()
            for key in teacher:
                if key.startswith(SHORTCUTS):
                    assert torch.equal(teacher[key], cut[key]), (layer.name, spec, key)


@pytest.mark.parametrize("model_name", FAMILIES)
def test_slim_specs_are_distinct_and_cover_each_block_kind(model_name):
    for layer, block in _blocks(model_name):
        specs = slim_specs(layer, block)
        if layer.kind not in KINDS_COVERED:
            assert specs == [], layer.kind
            continue
        widths = [s for s in specs if not s.endswith("_k3")]
        counts = [tuple(slim_channels(s, block).values()) for s in widths]
        assert len(set(counts)) == len(counts)
        assert tuple(slim_channels("slim_w1", block).values()) not in counts if counts else True
        assert specs == sorted(set(specs), key=specs.index) and all(s in list_candidates("slim_*") for s in specs)


def test_narrower_widths_keep_a_prefix_of_the_wider_ones_channels():
    # channels are sorted by importance, so w0.5 keeps the first half of w0.75's (once-for-all)
    for model_name, layer_name, path in [
        ("efficientnet_b0", "blocks.2.1", "conv_pw"),
        ("regnetx_002", "s3.b1", "conv1.conv"),
        ("convnext_atto", "stages.2.blocks.0", "mlp.fc1"),
    ]:
        layer, block = next(pair for pair in _blocks(model_name) if pair[0].name == layer_name)
        wide = build_candidate("slim_w0.75", layer, teacher_block=block).get_submodule(path).weight
        narrow = build_candidate("slim_w0.5", layer, teacher_block=block).get_submodule(path).weight
        assert torch.equal(narrow, wide[: len(narrow)])


def test_k3_crops_the_centre_of_the_depthwise_kernel():
    layer, block = next(pair for pair in _blocks("efficientnet_b0") if pair[0].name == "blocks.2.0")
    assert block.conv_dw.kernel_size == (5, 5) and "slim_k3" in slim_specs(layer, block)
    slim = build_candidate("slim_k3", layer, teacher_block=block)
    assert slim.conv_dw.kernel_size == (3, 3) and slim.conv_dw.padding == (1, 1)
    assert torch.equal(slim.conv_dw.weight, block.conv_dw.weight[..., 1:4, 1:4])
    # on a 1x1 map a 5x5 depthwise kernel only ever uses its centre tap: k3 changes nothing
    small = next(
        pair for pair in _blocks("efficientnet_b0") if pair[0].in_shape[1] == 1 and "slim_k3" in slim_specs(*pair)
    )
    x = _input(small[0])
    with torch.no_grad():
        torch.testing.assert_close(build_candidate("slim_k3", small[0], teacher_block=small[1])(x), small[1](x))


def test_building_is_deterministic_and_leaves_the_teacher_untouched():
    layer, block = next(pair for pair in _blocks("ghostnet_100") if pair[0].name == "blocks.3.0")
    before = {k: v.clone() for k, v in block.state_dict().items()}
    first = build_candidate("slim_w0.5_k3", layer, teacher_block=block).state_dict()
    second = build_candidate("slim_w0.5_k3", layer, teacher_block=block).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    assert build_candidate("slim_w0.5", layer, teacher_block=block.train()).training  # the teacher's mode


# ---- storing and counting --------------------------------------------------------------------


RELOAD_CASES = [
    ("resnet18", "layer2.0", "slim_w0.375"),
    ("resnet26", "layer3.0", "slim_w0.5"),
    ("efficientnet_b0", "blocks.2.0", "slim_w0.5_k3"),
    ("efficientnetv2_rw_t", "blocks.1.0", "slim_w0.25"),
    ("regnety_002", "s2.b1", "slim_w0.5"),
    ("convnext_atto", "stages.1.blocks.0", "slim_w0.25_k3"),
    ("ghostnet_100", "blocks.3.0", "slim_w0.5_k3"),
]


@pytest.mark.parametrize("model_name, layer_name, spec", RELOAD_CASES)
def test_a_saved_slim_candidate_reloads_bit_identical(model_name, layer_name, spec):
    layer, block = next(pair for pair in _blocks(model_name) if pair[0].name == layer_name)
    torch.manual_seed(0)
    trained = build_candidate(spec, layer, teacher_block=block).train()
    with torch.no_grad():  # stand-in for distillation: weights and BN statistics move
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
        trained(_input(layer, seed=3))
    trained.eval()
    state = trained.state_dict()
    as_numpy = {key: np.array(value.numpy()) for key, value in state.items()}  # what HDF5 stores
    x = _input(layer)
    for stored in (load(save(state)), {key: torch.from_numpy(value) for key, value in as_numpy.items()}):
        fresh = build_candidate(spec, layer, teacher_block=block)
        fresh.load_state_dict(stored)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x), trained(x))
    torch.save(state, io.BytesIO())  # plain tensors: nothing the library cannot write


@pytest.mark.parametrize("model_name, layer_name, spec", RELOAD_CASES)
def test_estimate_cost_counts_the_built_slim_module(model_name, layer_name, spec):
    layer, block = next(pair for pair in _blocks(model_name) if pair[0].name == layer_name)
    slim = build_candidate(spec, layer, teacher_block=block)
    cost = estimate_cost(spec, layer, teacher_block=block)
    assert cost == Candidate(spec, *count_params_macs(slim, layer.in_shape))
    assert cost.params < layer.params and cost.macs < layer.macs
    shipped = estimate_cost(spec, layer, inference=True, teacher_block=block)
    assert shipped.macs == cost.macs and shipped.params <= cost.params
    assert estimate_cost(spec + "_int8", layer, teacher_block=block) == Candidate(
        spec + "_int8", cost.params, cost.macs
    )


def test_slim_specs_need_the_teacher_block():
    layer, _ = _blocks("resnet18")[0]
    with pytest.raises(ValueError, match="teacher_block"):
        estimate_cost("slim_w0.5", layer)
    with pytest.raises(ValueError, match="teacher_block"):
        build_candidate("slim_w0.5", layer)


# ---- exempt kinds, registry ------------------------------------------------------------------


def test_exempt_kinds_get_no_width_specs_and_building_says_why():
    model, layers = timm_model("mobilenetv3_small_100", IMG)
    by_kind = {layer.kind: layer for layer in layers}
    separable, single = by_kind["DepthwiseSeparableConv"], by_kind["ConvBnAct"]
    assert slim_specs(separable, get_layer(model, separable.name)) == []  # k3, width = its input
    assert slim_specs(single, get_layer(model, single.name)) == []
    with pytest.raises(ValueError, match="no hidden channels"):
        build_candidate("slim_w0.5", separable, teacher_block=get_layer(model, separable.name))
    with pytest.raises(ValueError, match="no slim recipe for ConvBnAct"):
        build_candidate("slim_w0.5", single, teacher_block=get_layer(model, single.name))
    lcnet, lcnet_layers = timm_model("lcnet_050", IMG)
    k5 = [layer for layer in lcnet_layers if get_layer(lcnet, layer.name).conv_dw.kernel_size == (5, 5)]
    assert k5 and all(slim_specs(layer, get_layer(lcnet, layer.name)) == ["slim_k3"] for layer in k5)


def test_the_slim_family_is_listed_by_name_and_joins_compact_and_default_with_a_teacher_block():
    assert list_candidates("slim_*") == [
        "slim_k3",
        "slim_w0.25",
        "slim_w0.25_k3",
        "slim_w0.375",
        "slim_w0.375_k3",
        "slim_w0.5",
        "slim_w0.5_k3",
        "slim_w0.75",
        "slim_w0.75_k3",
        "slim_w0.875",
        "slim_w0.875_k3",
    ]
    assert not any(spec.startswith("slim") for spec in list_candidates())
    layer, block = _blocks("resnet18")[0]
    assert not any(spec.startswith("slim") for spec in space_for(layer, "full", teacher_block=block))
    for space in ("compact", "default"):
        assert not any(spec.startswith("slim") for spec in space_for(layer, space))  # no block: none
        with_block = space_for(layer, space, teacher_block=block)
        assert [s for s in with_block if s.startswith("slim")] == slim_specs(layer, block)
    assert space_for(layer, "dw_k3,slim_w0.5", teacher_block=block)[-1] == "slim_w0.5"


def test_k3_variants_are_left_out_where_the_map_is_too_small_for_k5_to_matter():
    model, layers = timm_model("efficientnet_b0", 32)
    small = [layer for layer in layers if max(layer.in_shape[1:]) <= 2]
    big = [layer for layer in layers if max(layer.in_shape[1:]) >= 4]
    for group, has_k3 in ((small, False), (big, True)):
        specs = [s for layer in group for s in space_for(layer, "compact", teacher_block=get_layer(model, layer.name))]
        assert any(s.startswith("slim") and s.endswith("k3") for s in specs) == has_k3


@pytest.mark.parametrize(
    "spec, canonical",
    [("slim_w0.5", "slim_w0.5"), ("slim_k3_w0.5", "slim_w0.5_k3"), ("slim_w1.0", "slim_w1"), ("slim_k3", "slim_k3")],
)
def test_slim_specs_decode_to_one_canonical_spelling(spec, canonical):
    assert encode_spec(*decode_spec(spec)) == canonical


@pytest.mark.parametrize(
    "spec, message", [("slim", "at least one of"), ("slim_w0.3", "bad value"), ("slim_k5", "bad value")]
)
def test_bad_slim_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        decode_spec(spec)


# ---- least-squares start (issue 14 item 2; not wired into distillation) -------------------------

LSQ_CASES = [
    ("efficientnet_b0", "blocks.2.0"),  # strided, SE, k5
    ("efficientnet_b0", "blocks.2.1"),
    ("efficientnetv2_rw_t", "blocks.1.0"),  # EdgeResidual
    ("resnet26", "layer2.0"),
    ("regnety_002", "s2.b1"),
    ("convnext_atto", "stages.1.blocks.0"),  # fc2 has a bias, no BN
    ("resnet18", "layer2.0"),  # BasicBlock: a 3x3 last conv, fitted on its input's 3x3 patches
    ("resnet18", "layer1.1"),
]


def _block_nmse(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        target = teacher(x)
        return float(((student(x) - target) ** 2).mean() / target.var())


@pytest.mark.parametrize("model_name, layer_name", LSQ_CASES)
def test_least_squares_start_lowers_the_held_out_error_of_slim_w05(model_name, layer_name):
    from lana.candidates.lsq import least_squares_start

    layer, block = next(pair for pair in _blocks(model_name) if pair[0].name == layer_name)
    fit_inputs, held_out = torch.randn(16, *layer.in_shape).relu(), torch.randn(16, *layer.in_shape).relu()
    slim = build_candidate("slim_w0.5", layer, teacher_block=block)
    before = _block_nmse(slim, block, held_out)
    start = least_squares_start(slim, block, fit_inputs, positions=4096)
    assert start.nmse_after < start.nmse_before and start.positions == min(
        4096, 16 * layer.out_shape[1] * layer.out_shape[2]
    )
    assert _block_nmse(slim, block, held_out) < before
    assert not slim.training  # the teacher's mode, restored after the fit


def test_least_squares_start_refuses_blocks_it_does_not_cover():
    from lana.candidates.lsq import least_squares_start

    layer, block = next(pair for pair in _blocks("ghostnet_100") if pair[0].name == "blocks.1.0")
    slim = build_candidate("slim_w0.5", layer, teacher_block=block)
    with pytest.raises(ValueError, match="no least-squares start for a GhostBottleneck"):
        least_squares_start(slim, block, torch.randn(2, *layer.in_shape))
