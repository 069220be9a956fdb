"""Helpers shared by the test modules (importable because pyproject puts tests/ on the path)."""

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
