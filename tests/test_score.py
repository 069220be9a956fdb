"""Scores (issue 5): the fan-out scoring equals swapping one layer at a time; score correlation."""

import pytest

from lana.correlation import score_correlation, spearman


def test_spearman_matches_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, rel=1e-6)


def test_fanout_scores_equal_one_swap_at_a_time(tiny_library):
    from lana.context import context_from_library
    from lana.data import load_dataset
    from lana.layers import replace_layer
    from lana.score import LogitScorer, score_layer
    from lana.train import predict_logits

    path, _ = tiny_library
    ctx = context_from_library(path)
    data = load_dataset("fashion-mnist", "score", 32, limit=48)
    teacher_logits = predict_logits(ctx.teacher, data)
    li = 1
    specs = [s for s in ctx.specs[li] if s != "teacher"]
    fanned = score_layer(
        ctx.teacher, ctx.layers[li], [ctx.load(li, s) for s in specs], data, teacher_logits, batch_size=16
    )
    for spec, got in zip(specs, fanned):
        import copy

        swapped = copy.deepcopy(ctx.teacher)
        replace_layer(swapped, ctx.layers[li].name, ctx.load(li, spec))
        expected = LogitScorer()(predict_logits(swapped, data), teacher_logits, data.labels)
        for kind in expected:
            assert got[kind] == pytest.approx(expected[kind], abs=1e-4), (spec, kind)


def test_score_correlation_reports_every_kind(tiny_library):
    path, _ = tiny_library
    report = score_correlation(path, count=4, limit=48)
    assert set(report.spearman) == {"top1_drop", "ce_delta", "kl"}
    assert len(report.top1) == 4 and all(0 <= t <= 100 for t in report.top1)
    assert report.best() in report.spearman
    assert "Spearman" in report.to_text()
