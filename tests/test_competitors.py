"""bench.competitors: the rewrite that lets Model Optimizer's FastNAS search a timm TF-ported model."""

import sys
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.competitors import traceable  # noqa: E402


def _lite0():
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=10, pretrained=False).eval()
    for module in model.modules():  # non-trivial BN statistics, so a dropped buffer would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def test_traceable_keeps_the_outputs_and_drops_timms_dynamic_layers():
    from timm.layers import BatchNormAct2d
    from timm.layers.conv2d_same import Conv2dSame

    model, x = _lite0(), torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        before = model(x)
        rewritten = traceable(model, x[:1])
        after = rewritten(x)
    assert not any(isinstance(m, (Conv2dSame, BatchNormAct2d)) for m in rewritten.modules())
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    assert not rewritten.training


def test_fastnas_finds_a_search_space_in_the_rewritten_model(tmp_path):
    """On the model as timm builds it, mtp.prune raises "does not contain any configurable
    hyperparameters"; after traceable() it prunes to a smaller network that still runs."""
    mtp = pytest.importorskip("modelopt.torch.prune")
    model, x = _lite0(), torch.randn(4, 3, 32, 32)
    params = sum(p.numel() for p in model.parameters())
    loader = [(x, torch.zeros(4, dtype=torch.long))]
    pruned, _ = mtp.prune(traceable(model, x[:1]), mode="fastnas", constraints={"flops": "60%"}, dummy_input=x[:1],
                          config={"data_loader": loader, "score_func": lambda m: 0.0,
                                  "checkpoint": str(tmp_path / "fastnas.pth"), "verbose": False})  # fmt: skip
    assert sum(p.numel() for p in pruned.parameters()) < params
    assert pruned(x).shape == (4, 10)


def test_the_latency_match_bisects_on_the_paired_ratio_to_the_reference(monkeypatch):
    """bench.baselines.match_latency times each step paired with the reference (lana.paired), not
    as two medians, and keeps the step inside the band with its interval."""
    import lana.paired
    from bench.baselines import match_latency
    from lana.paired import Relative

    target, seen = torch.nn.Identity(), []

    def paired(models, reference, input_shape, table, threads=None, **options):
        ((name, model),) = models.items()
        seen.append((reference, options))
        ratio = model.weight.shape[0] / 100  # a "latency" that grows with the knob: width / 100
        return {name: Relative(ratio, ratio * 0.99, ratio * 1.01, options["blocks"], ratio, 1.0)}

    monkeypatch.setattr(lana.paired, "time_relative", paired)
    model, match = match_latency(lambda knob: torch.nn.Conv2d(3, round(knob), 1), target, (3, 8, 8), "cpu-b1",
                                 1.0, 100.0, goal=0.3, band=(0.95, 1.0), iters=8, blocks=7)  # fmt: skip
    assert all(reference is target and options == {"blocks": 7, "max_blocks": 21} for reference, options in seen)
    assert match.matched and 0.95 <= match.ratio <= 1.0 and model.weight.shape[0] == round(match.knob)
    assert match.interval == pytest.approx((match.ratio * 0.99, match.ratio * 1.01))
    assert [round(k, 3) for k, _ in match.tries[:3]] == [50.5, 25.75, 38.125]  # halves the range each step


def test_a_competitor_that_training_moved_out_of_the_band_is_matched_again(monkeypatch, tmp_path):
    """bench._budget_matched checks the budget again on the trained model: training here makes
    every model 20% faster, so the first match lands at ~0.78 of the budget once trained; the
    knob is matched again at the goal over that factor, trained again, and that model is kept."""
    from dataclasses import replace
    from types import SimpleNamespace

    import bench
    import lana.paired
    from bench.workloads import WORKLOADS, smoke
    from lana.paired import Relative

    def paired(models, reference, input_shape, table, threads=None, **options):
        ((name, model),) = models.items()
        ratio = model.weight.shape[0] / 100 * (0.8 if getattr(model, "trained", False) else 1.0)
        return {name: Relative(ratio, ratio * 0.99, ratio * 1.01, 20, ratio, 1.0)}

    trainings = []

    def finetune(model, epochs, desc, recipe=None, seed=0):
        model.trained = True
        trainings.append(model.weight.shape[0])
        return 1.0

    monkeypatch.setattr(lana.paired, "time_relative", paired)
    build = lambda knob: torch.nn.Conv2d(3, round(knob), 1)  # noqa: E731
    monkeypatch.setattr(bench, "_competitor_builders", lambda run: {"prune": (build, 1.0, 100.0, True)})
    run = SimpleNamespace(w=replace(smoke(WORKLOADS["W1"]), search_iters=8), factors={"0.5x": 0.5}, teacher=torch.nn.Identity(),
                          evaluate=lambda model, limit=None: 50.0, finetune=finetune, failures={},
                          cached=lambda budget, name, make, rebuild, **kw: make(tmp_path))  # fmt: skip
    row = bench._budget_matched(run, "0.5x", "prune", 0)
    assert len(trainings) == 2 and trainings[1] > trainings[0]  # matched again, wider, trained again
    assert row["first_try"]["match_trained"]["ratio"] < 0.95  # the first model, trained, fell under the band
    assert 0.95 <= row["match_trained"]["ratio"] <= 1.0 and row["match"]["goal_scale"] == pytest.approx(0.8, abs=0.02)
    assert row["train_s"] == 2.0 and (tmp_path / "model.safetensors").is_file()


def test_a_knob_the_competitor_cannot_build_moves_the_bisection_instead_of_failing_the_row(monkeypatch):
    """W2 at 0.35x (bf511ec): FastNAS's FLOPs share was bisected under its smallest subnet, Model
    Optimizer refused, and the row became "FastNAS failed". A knob out of the builder's range is a
    step toward the side it names; the match then lands in the band above it."""
    import lana.paired
    from bench.baselines import KnobOutOfRange, match_latency
    from lana.paired import Relative

    def paired(models, reference, input_shape, table, threads=None, **options):
        ((name, model),) = models.items()
        ratio = model.weight.shape[0] / 100
        return {name: Relative(ratio, ratio * 0.99, ratio * 1.01, 20, ratio, 1.0)}

    def make(knob):  # nothing under 30 channels can be built
        if knob < 30:
            raise KnobOutOfRange(f"nothing under {knob}", "low")
        return torch.nn.Conv2d(3, round(knob), 1)

    monkeypatch.setattr(lana.paired, "time_relative", paired)
    model, match = match_latency(make, torch.nn.Identity(), (3, 8, 8), "cpu-b1", 1.0, 100.0, goal=0.33,
                                 band=(0.95, 1.0), iters=8)  # fmt: skip
    assert (25.75, None) in [(round(k, 2), r) for k, r in match.tries]  # tried, refused, moved up
    assert match.matched and 0.95 <= match.ratio <= 1.0 and round(match.knob) >= 30
    # a goal under the smallest model: every knob refused, the error is raised, not a model returned
    with pytest.raises(KnobOutOfRange):
        match_latency(lambda knob: make(knob / 10), torch.nn.Identity(), (3, 8, 8), "cpu-b1", 1.0, 100.0,
                      goal=0.01, band=(0.95, 1.0), iters=4)  # fmt: skip
