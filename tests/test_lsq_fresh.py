"""The least-squares start of fresh candidates (issue 14 item 2): their last linear unit fitted to
the teacher block's output minus their own shortcut, before distillation."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import one_thread, timm_model  # noqa: F401  (one_thread: autouse fixture)

from lana.candidates import build_candidate
from lana.layers import get_layer

# (model, layer): a stride-2 channel-changing ResNet block, a shape-keeping one, an inverted residual
CASES = [("resnet18", "layer2.0"), ("resnet18", "layer1.1"), ("tf_efficientnet_lite0", "blocks.2.1")]
FITTED = ["ir_k3_e2", "dw_k3", "basic_w0.25", "bottleneck_w0.25", "fir_k3_e1"]


def _layer(model_name: str, layer_name: str):
    """The layer and a copy of its block with random BN affines and statistics: timm zero-inits
    the last BN of residual blocks, which would make the block the identity."""
    model, layers = timm_model(model_name, img=32)
    block = copy.deepcopy(get_layer(model, layer_name))
    generator = torch.Generator().manual_seed(0)
    for module in block.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = torch.rand(n, generator=generator) + 0.5
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_var = torch.rand(n, generator=generator) + 0.5
    return next(layer for layer in layers if layer.name == layer_name), block


def _inputs(layer, n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, *layer.in_shape, generator=torch.Generator().manual_seed(seed)).relu()


def _nmse(candidate, block, x) -> float:
    """Held-out error of the candidate's output against the block's, as distillation measures it
    (candidate in eval mode with the statistics it has)."""
    with torch.no_grad():
        target = block.eval()(x)
        return float(((candidate.eval()(x) - target) ** 2).mean() / target.var())


@pytest.mark.parametrize("model_name, layer_name", CASES)
@pytest.mark.parametrize("spec", FITTED)
def test_fresh_start_lowers_the_held_out_error(model_name, layer_name, spec):
    from lana.candidates.lsq import _moments_from, least_squares_fresh

    layer, block = _layer(model_name, layer_name)
    fit, held_out = _inputs(layer, 32, 0), _inputs(layer, 16, 1)
    torch.manual_seed(0)
    candidate = build_candidate(spec, layer).train()
    reference = build_candidate(spec, layer)
    reference.load_state_dict(candidate.state_dict())
    _moments_from(reference, fit)  # the fair "before": the same statistics, no fit
    start = least_squares_fresh(candidate, block, fit, positions=4096)
    assert candidate.training and not block.training  # modes as they were
    assert start.nmse_after < start.nmse_before
    assert _nmse(candidate, block, held_out) < _nmse(reference, block, held_out)


def test_fresh_start_keeps_the_fit_in_train_mode():
    """Distillation runs BN in train mode: the fitted unit must compute the same there."""
    from lana.candidates.lsq import least_squares_fresh

    layer, block = _layer("resnet18", "layer2.0")
    x = _inputs(layer, 32, 0)
    torch.manual_seed(0)
    candidate = build_candidate("ir_k3_e2", layer)
    least_squares_fresh(candidate, block, x, positions=4096)
    with torch.no_grad():
        train_out, eval_out = candidate.train()(x), candidate.eval()(x)
    assert float(((train_out - eval_out) ** 2).mean() / eval_out.var()) < 0.05


@pytest.mark.parametrize("spec, why", [("rep_k3", "not a linear conv"), ("ghost_k3_r2", "not a linear conv")])
def test_fresh_start_refuses_candidates_without_a_linear_last_unit(spec, why):
    from lana.candidates.lsq import least_squares_fresh

    layer, block = _layer("resnet18", "layer1.1")
    candidate = build_candidate(spec, layer)
    with pytest.raises(ValueError, match=why):
        least_squares_fresh(candidate, block, _inputs(layer, 4, 0))
    with pytest.raises(ValueError, match="not a candidate built from a plan"):
        least_squares_fresh(torch.nn.Identity(), block, _inputs(layer, 4, 0))
