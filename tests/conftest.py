"""Shared fixtures: one tiny library per test session (resnet10t, 32 px, tiny space, a few steps)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub at test time: fail fast, use offline weights

TINY_BUILD = dict(
    model="resnet10t",
    img_size=32,
    space="tiny",
    max_steps=3,
    batch_size=32,
    limit=256,
    score_images=64,
    device="cpu",
    tables=("cpu-b1",),
    latency_rounds=1,
    threads=1,
)


@pytest.fixture(scope="session")
def tiny_build():
    """The settings of the tiny library (a copy: tests may change it)."""
    return dict(TINY_BUILD)


@pytest.fixture(scope="session")
def tiny_library(tmp_path_factory):
    """(path, BuildResult) of a complete tiny library; its work directory is kept for inspection."""
    from lana.pipeline import BuildConfig, build

    out = tmp_path_factory.mktemp("lib") / "tiny.h5"
    result = build(BuildConfig(**TINY_BUILD), out, keep_work=True)
    return out, result
