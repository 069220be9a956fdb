"""Tests for lana.layers: finding replaceable layers, replacing them, describing the space."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import IMG, one_thread, timm_model  # noqa: F401  (one_thread: autouse fixture)
from torch import nn

from lana.candidates import build_candidate, count_params_macs
from lana.layers import describe_space, find_layers, get_layer, replace_layer

# model -> (number of blocks, block classes): the architectures' published block counts
EXPECTED = {
    "resnet18": (8, {"BasicBlock"}),
    "resnet50": (16, {"Bottleneck"}),
    "resnext50_32x4d": (16, {"Bottleneck"}),
    "efficientnet_b0": (16, {"DepthwiseSeparableConv", "InvertedResidual"}),
    "efficientnet_b2": (23, {"DepthwiseSeparableConv", "InvertedResidual"}),
    "tf_efficientnet_lite0": (16, {"DepthwiseSeparableConv", "InvertedResidual"}),
    "mobilenetv2_100": (17, {"DepthwiseSeparableConv", "InvertedResidual"}),
    "mobilenetv3_large_100": (16, {"DepthwiseSeparableConv", "InvertedResidual", "ConvBnAct"}),
    "regnetx_002": (13, {"Bottleneck"}),
    "convnext_atto": (12, {"ConvNeXtBlock"}),
}


@pytest.mark.parametrize("model_name", list(EXPECTED))
def test_find_layers_finds_the_blocks_of_each_family(model_name):
    model, layers = timm_model(model_name)
    count, kinds = EXPECTED[model_name]
    assert len(layers) == count
    assert {layer.kind for layer in layers} == kinds
    assert len({layer.name for layer in layers}) == count
    for layer in layers:
        assert type(get_layer(model, layer.name)).__name__ == layer.kind
        assert layer.stride in (1, 2)
        assert layer.out_shape[1] == math.ceil(layer.in_shape[1] / layer.stride)
        assert layer.params > 0 and layer.macs > 0
    # forward order: spatial sizes never grow, and every model here ends at stride 32
    heights = [layer.in_shape[1] for layer in layers]
    assert heights == sorted(heights, reverse=True)
    assert layers[-1].out_shape[1:] == (IMG // 32, IMG // 32)


@pytest.mark.parametrize("model_name", ["resnet50", "efficientnet_b0", "convnext_atto"])
def test_layer_params_and_macs_are_those_of_the_teacher_block(model_name):
    model, layers = timm_model(model_name)
    for layer in layers:
        block = get_layer(model, layer.name)
        assert (layer.params, layer.macs) == count_params_macs(block, layer.in_shape)


def test_find_layers_uses_forward_order_and_consecutive_shapes_within_a_stage():
    _, layers = timm_model("resnet18")
    assert [layer.name for layer in layers] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    for previous, layer in zip(layers, layers[1:], strict=False):
        assert previous.out_shape == layer.in_shape  # ResNet blocks follow each other directly


def test_find_layers_restores_training_mode_and_leaves_bn_statistics_alone():
    model, _ = timm_model("regnetx_002")
    model.train()
    model.stem.bn.eval()  # a frozen BN, as in fine-tuning: must stay frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    find_layers(model, (3, IMG, IMG))
    assert model.training and model.s1.training and not model.stem.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


def test_find_layers_without_shape_uses_the_pretrained_input_size():
    model, _ = timm_model("regnetx_002")
    layers = find_layers(model)
    assert layers[0].in_shape == (32, 112, 112)


def test_a_vit_has_no_layers_and_the_error_names_the_supported_blocks():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, num_classes=10)
    with pytest.raises(ValueError, match="no replaceable layers") as error:
        find_layers(vit, (3, IMG, IMG))
    for kind in ("BasicBlock", "Bottleneck", "InvertedResidual", "ConvNeXtBlock"):
        assert kind in str(error.value)


def test_a_model_that_cannot_run_at_the_shape_is_a_value_error():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMG, num_classes=10)
    with pytest.raises(ValueError, match=r"cannot trace VisionTransformer on one input of shape \(3, 32, 32\)"):
        find_layers(vit, (3, 32, 32))


def test_blocks_called_twice_or_with_two_inputs_are_not_layers():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.stages = nn.Sequential(_Block(8), _Block(8))
            self.extra = nn.ModuleList([_Block(8)])
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.stages[1](self.stages(self.stem(x)))  # stages.1 runs twice
            x = self.extra[0](x, x)  # two tensors in
            return self.head(x.mean((2, 3)))

    layers = find_layers(Toy(), (3, 16, 16))
    assert [layer.name for layer in layers] == ["stages.0"]
    assert layers[0].in_shape == layers[0].out_shape == (8, 14, 14)


class _Block(nn.Module):
    def __init__(self, chs):
        super().__init__()
        self.conv = nn.Conv2d(chs, chs, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x, skip=None):
        return (x if skip is None else skip) + self.act(self.conv(x))


class _Unit(nn.Module):  # conv -> BN, like timm's ConvNormAct
    def __init__(self, chs):
        super().__init__()
        self.conv = nn.Conv2d(chs, chs, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(chs)

    def forward(self, x):
        return self.bn(self.conv(x))


class _Plain(nn.Module):  # a block without a residual: a chain of units
    def __init__(self, chs):
        super().__init__()
        self.unit1, self.unit2 = _Unit(chs), _Unit(chs)

    def forward(self, x):
        return self.unit2(self.unit1(x))


class _Residual(_Plain):
    def forward(self, x):
        return x + super().forward(x)


class _Stage(nn.Module):  # not a Sequential, but chains blocks: a container
    def __init__(self, chs):
        super().__init__()
        self.b1, self.b2 = _Residual(chs), _Residual(chs)

    def forward(self, x):
        return self.b2(self.b1(x))


def test_stages_are_descended_but_blocks_without_residual_are_not():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.body = nn.Sequential(_Plain(8), _Stage(8))

        def forward(self, x):
            return self.body(self.stem(x)).mean((2, 3))

    layers = find_layers(Toy(), (3, 8, 8))
    assert [layer.name for layer in layers] == ["body.0", "body.1.b1", "body.1.b2"]
    assert [layer.kind for layer in layers] == ["_Plain", "_Residual", "_Residual"]


def test_replace_layer_works_for_indices_and_named_children():
    model, layers = timm_model("regnetx_002")
    layer = layers[0]  # s1.b1: a named child of a RegStage
    original = get_layer(model, layer.name)
    candidate = build_candidate("ir_k3_e2", layer)
    assert replace_layer(model, layer.name, candidate) is original
    assert get_layer(model, layer.name) is candidate
    replace_layer(model, layer.name, original)

    sequential = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 1)))
    replace_layer(sequential, "1.1", nn.Identity())
    assert isinstance(sequential[1][1], nn.Identity)
    assert sequential(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)


def test_unknown_layer_names_raise_key_error():
    model, _ = timm_model("resnet18")
    with pytest.raises(KeyError, match="layer9"):
        get_layer(model, "layer9.0")
    with pytest.raises(KeyError):
        replace_layer(model, "layer1.7", nn.Identity())


def test_describe_space_table_ends_with_the_space_size():
    summary = describe_space("resnet18", "tiny", img_size=IMG, num_classes=10)
    assert [row.layer.name for row in summary.rows] == [layer.name for layer in timm_model("resnet18")[1]]
    assert summary.log10_size == pytest.approx(sum(math.log10(row.n_candidates) for row in summary.rows))
    text = summary.to_text()
    assert text.splitlines()[-1].endswith(f"space size: 10^{summary.log10_size:.1f}")
    assert "layer2.0" in text and "64x16x16 -> 128x8x8" in text
