"""Calibration data of int8 candidates: a fixed set of training images and what a network sees
at each of its layers on them.

An int8 candidate's activation ranges come from its observers, which see inputs at its layer
(``lana.candidates.quantize_int8``). In the library those are the *teacher's* inputs, on the
first ``count`` images of the build's training split: the same images and the same teacher give
the same observers, so a library reloaded later (``lana.context.context_from_library``) rebuilds
exactly the int8 candidates that were scored and timed, and a saved student re-quantizes to the
one that was measured (``lana.student.load_student``). The images are named, never stored:
``CalibrationSet`` records where they come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["CALIBRATION_BATCH", "CALIBRATION_IMAGES", "CalibrationSet", "capture_inputs"]

# 256 images in batches of 64: a few hundred samples set per-tensor ranges to within a few
# percent (quant.py's docstring); more only costs memory, which is the layer's input times this
CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration images: the first ``count`` of ``load_dataset(dataset, "train",
    img_size, seed=seed, limit=limit)``, the split the build distilled on."""

    dataset: str
    img_size: int
    seed: int = 0
    limit: int | None = None
    count: int = CALIBRATION_IMAGES
    # how an image folder's splits were cut and transformed (lana.data.split_of); None/False for
    # Fashion-MNIST and for configurations saved before folders streamed
    score_split: int | float | str | None = None
    model: str | None = None
    synsets: bool = False

    @classmethod
    def of(cls, config: dict) -> CalibrationSet:
        """The calibration set of a build or student configuration (a dict with ``dataset``,
        ``img_size``, ``seed``, ``limit`` and optionally ``count``, ``score_split``, ``model``)."""
        return cls(
            config["dataset"],
            int(config["img_size"]),
            int(config.get("seed", 0)),
            config.get("limit"),
            int(config.get("count", CALIBRATION_IMAGES)),
            config.get("score_split"),
            config.get("model"),
            bool(config.get("synsets", False)),
        )

    def images(self) -> torch.Tensor:
        """The uint8 images, (count, C, H, W) (fewer when the split is smaller)."""
        from lana.data import split_of

        # ``limit`` keeps a prefix of the shuffled split, so loading only the first ``count``
        # images gives the same ones without resizing (or decoding) the whole split
        limit = self.count if self.limit is None else min(self.limit, self.count)
        built = {"dataset": self.dataset, "img_size": self.img_size, "seed": self.seed, "model": self.model,
                 "score_split": self.score_split, "synsets": self.synsets}  # fmt: skip
        return split_of(built, "train", limit=limit).head(limit)


@torch.no_grad()
def capture_inputs(
    model: nn.Module, names: Sequence[str], images: torch.Tensor, batch_size: int = CALIBRATION_BATCH
) -> dict[str, list[torch.Tensor]]:
    """The inputs of layers ``names`` of ``model`` on ``images``, batch by batch, in one pass.

    Args:
        model: A network (teacher or student); run in eval mode on the CPU, where int8 runs
            (a copy is moved there if it is elsewhere; its training flag is restored).
        names: Dotted names of the layers (forward pre-hooks record their first argument).
        images: uint8 images, normalised as ``model`` expects (``lana.train.model_norm``).
        batch_size: Images per forward; each layer gets one tensor per batch.

    Returns:
        ``{name: [input batch, ...]}``, float32 CPU tensors.

    Raises:
        RuntimeError: If a layer did not run in the forward.
    """
    import copy

    from lana.data import to_model_input
    from lana.layers import get_layer
    from lana.train import model_norm

    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def hook(name):
        def record(_module, args):
            captured[name].append(args[0].detach().float().cpu())

        return record

    was_training = model.training
    handles = [get_layer(model, name).register_forward_pre_hook(hook(name)) for name in names]
    try:
        model.eval()
        norm = model_norm(model)
        for start in range(0, len(images), batch_size):
            model(to_model_input(images[start : start + batch_size], "cpu", **norm))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name, batches in captured.items() if not batches]
    if missing:
        raise RuntimeError(f"layers {missing} did not run in the forward of {type(model).__name__}")
    return captured
