"""Helpers shared by the test modules (importable because pyproject puts tests/ on the path)."""

import contextlib
import functools

import pytest
import torch
from torch import nn

from lana.layers import Layer, find_layers

IMG = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convs on a shared 2-core machine: two OpenMP threads spin against each other and run
    ~50x slower than one. Use as ``from helpers import one_thread`` (autouse within the module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def timm_model(name: str, img: int = IMG) -> tuple[nn.Module, list[Layer]]:
    """A pretrained=False timm model (seed 0, eval) and its layers at ``img`` px, built once."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    return model, find_layers(model, (3, img, img))


@contextlib.contextmanager
def edited_library(path):
    """Open a library with h5py to change it by hand, then re-stamp its checksums, so that the
    test sees what the edit means rather than the damage detection (which has its own tests)."""
    import h5py

    from lana.library.file import write_checksums

    with h5py.File(path, "r+") as f:
        yield f
        write_checksums(f)
