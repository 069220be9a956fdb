"""Paired timing (lana.paired): the ratio of two models' latencies and its interval."""

import time

import pytest
import torch
from torch import nn

from lana.paired import median_interval, time_relative


class _Sleeps(nn.Module):
    """A model whose forward takes ``ms`` milliseconds whatever the machine's speed."""

    def __init__(self, ms: float):
        super().__init__()
        self.ms = ms

    def forward(self, x):
        time.sleep(self.ms / 1e3)
        return x


def test_median_interval_brackets_the_median_by_order_statistics():
    values = list(range(1, 101))  # 1..100: median 50.5; ranks 50 -+ 9.8 -> the 41st and 60th values
    median, low, high = median_interval(values)
    assert median == 50.5 and (low, high) == (41, 60)
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 2.0, 2.0)  # under 6 values: no interval


def test_time_relative_recovers_a_known_ratio_and_stops_when_precise():
    found = time_relative({"half": _Sleeps(4.0), "same": _Sleeps(8.0)}, _Sleeps(8.0), (3, 8, 8), "cpu-b1",
                          blocks=8, max_blocks=24, precision=0.2, repeats=2)  # fmt: skip
    half, same = found["half"], found["same"]
    assert half.ratio == pytest.approx(0.5, rel=0.15) and same.ratio == pytest.approx(1.0, rel=0.15)
    assert half.low <= half.ratio <= half.high and half.blocks == 8  # within 20% at once: no more blocks
    assert half.model_ms == pytest.approx(4.0, rel=0.5) and half.reference_ms == pytest.approx(8.0, rel=0.5)
    with pytest.raises(ValueError, match="max_blocks >= blocks"):
        time_relative({"a": nn.Identity()}, nn.Identity(), (3, 8, 8), "cpu-b1", blocks=10, max_blocks=5)


def test_time_relative_adds_blocks_while_the_interval_is_wide():
    torch.manual_seed(0)

    class Jitter(nn.Module):  # 2 or 6 ms at random: block ratios spread widely
        def forward(self, x):
            time.sleep((2.0 if torch.rand(()) < 0.5 else 6.0) / 1e3)
            return x

    found = time_relative({"j": Jitter()}, _Sleeps(4.0), (3, 8, 8), "cpu-b1", blocks=6, max_blocks=18,
                          precision=0.001, repeats=1)["j"]  # fmt: skip
    assert found.blocks == 18 and found.half_width > 0.001  # never precise enough: stopped at max_blocks


def test_pairs_take_their_blocks_in_turn():
    """Two pairs: each takes one block, then the other, so both ratios span the same minutes."""
    calls = []

    class Named(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            calls.append(self.name)
            return x

    from lana.paired import time_pairs

    reference = Named("r")
    found = time_pairs({"a": (Named("a"), reference), "b": (Named("b"), reference)}, (3, 4, 4), "cpu-b1",
                       blocks=2, max_blocks=2, repeats=1)  # fmt: skip
    # one untimed call and one timed per side; the order within a block flips every block (before
    # them, lana.candidates.inference_form may run each module once)
    assert "".join(calls[-16:]) == "aarr" + "bbrr" + "rraa" + "rrbb"
    assert found["a"].blocks == found["b"].blocks == 2


def test_band_rank_puts_ratios_in_the_band_first_then_nearer_its_middle():
    from lana.paired import band_rank

    band = (0.95, 1.0)
    ranked = sorted([1.06, 0.90, 0.99, 0.975, 0.951, 1.001], key=lambda r: band_rank(r, band), reverse=True)
    assert ranked == [0.975, 0.99, 0.951, 1.001, 0.90, 1.06]
