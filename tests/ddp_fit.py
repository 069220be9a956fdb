"""Run by tests/test_distributed.py, alone or under torchrun: 20 steps of lana's fit on a small
BN-free CNN; rank 0 writes every step's loss to the JSON file given."""

import json
import sys

import torch
from torch import nn

from lana.data import load_dataset
from lana.dist import is_main_process
from lana.train import Recipe, fit


def main(out: str, dataset: str) -> None:
    data = load_dataset(dataset, "train", 32, limit=None if dataset != "fashion-mnist" else 640, model="resnet18")
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, data.num_classes))  # fmt: skip
    recipe = Recipe(epochs=100, batch_size=16, lr=0.05, max_steps=20, workers=0, augment="crop-flip")
    result = fit(model, data, recipe, device="cpu", desc="ddp check")
    if is_main_process():
        with open(out, "w") as f:
            json.dump(list(result.losses), f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
