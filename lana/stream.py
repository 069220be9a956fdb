"""Image folder splits streamed through timm's data pipeline: transforms, datasets, samplers, loaders.

Nothing is decoded until a batch asks for it, so memory does not grow with the data set. Batches
are uint8 (B, C, H, W) with int64 labels: every consumer normalises on its own device for its own
model. Augmentation is seeded per sample from (seed, epoch, index), so batches do not depend on
the number of DataLoader workers. The folders themselves (layout, splits, bad files) are
:mod:`lana.folder`'s.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

import numpy as np
import torch

__all__ = [
    "FolderError",
    "FolderDataset",
    "EpochSampler",
    "resolve_config",
    "folder_transform",
    "make_folder_loader",
    "default_workers",
]


class FolderError(ValueError):
    """A data set that cannot be used as given; the message says what would work."""


class FolderDataset(torch.utils.data.Dataset):
    """Images of one split, decoded when asked for: (uint8 (C, H, W) tensor, int label).

    Items are keyed by ``index`` or by ``(epoch, index)`` (what :class:`EpochSampler` yields): the
    random transforms run under a generator seeded from (seed, epoch, index), so a sample's
    augmentation is the same whichever worker loads it.
    """

    def __init__(self, base, indices: np.ndarray, transform: Callable, channels: int = 3, seed: int = 0):
        self.base, self.indices, self.transform = base, np.asarray(indices, dtype=np.int64), transform
        self.mode, self.seed = ("L" if channels == 1 else "RGB"), seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        base_index = int(self.indices[index])
        try:
            image, target = _load(self.base, base_index, self.mode)
        except OSError as error:  # a file gone bad since the scan: name it
            raise OSError(f"{_filename(self.base, base_index)}: {error}") from error
        with _seeded(self.seed, epoch, index):
            x = self.transform(image)
        x = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if x.dtype != torch.uint8:
            raise TypeError(f"the transform returned {x.dtype}; lana's loaders yield uint8 (no normalisation)")
        return x, int(target)

    def filename(self, index: int) -> str:
        return _filename(self.base, int(self.indices[index]))


class EpochSampler(torch.utils.data.Sampler):
    """This rank's share of ``size`` indices, as ``(epoch, index)`` pairs.

    The order comes from (seed, epoch) alone, like torch's ``DistributedSampler``: every rank
    computes the same permutation and takes every ``world_size``-th index from ``rank``. Each pass
    uses the current epoch then moves to the next; :meth:`set_epoch` sets it explicitly. When
    shuffling (training) the indices are padded by wrapping around so ranks take equal steps
    (dropped instead with ``drop_last``); evaluation is never padded, so no image counts twice.
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last=False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.drop_last, self.epoch = rank, world_size, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, epoch: int) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.world_size > 1 and self.drop_last:
            order = order[: self.size - self.size % self.world_size]
        elif self.world_size > 1 and self.shuffle and order:
            padding = -len(order) % self.world_size
            order += (order * (padding // len(order) + 1))[:padding]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        total = self.size  # what _order keeps, without drawing a permutation
        if self.world_size > 1 and self.drop_last:
            total -= self.size % self.world_size
        elif self.world_size > 1 and self.shuffle and self.size:
            total += -self.size % self.world_size
        return len(range(self.rank, total, self.world_size))

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return ((epoch, index) for index in self._order(epoch))


# -- transforms ---------------------------------------------------------------------------------


def resolve_config(model: torch.nn.Module | None = None, img_size: int | None = None, data_config=None) -> dict:
    """timm's data configuration (input_size, interpolation, mean, std, crop_pct, crop_mode).

    From ``data_config`` (a pretrained config dict) when given, else from the model's
    ``pretrained_cfg``; ``img_size`` overrides the input size (``--img-size``). The train-time
    size and crop_pct are used, not the ``test_*`` ones: lana measures a model at one input size.
    """
    from timm.data import resolve_data_config, resolve_model_data_config

    if data_config is not None:
        config = resolve_data_config(pretrained_cfg=dict(data_config))
    elif model is not None:
        config = resolve_model_data_config(model)
    else:
        raise ValueError("resolve_config needs a model or a data_config")
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], int(img_size), int(img_size))
    return config


def folder_transform(
    model: torch.nn.Module | None = None,
    *,
    training: bool,
    img_size: int | None = None,
    data_config: dict | None = None,
    scale: tuple[float, float] | None = None,
    hflip: float = 0.5,
) -> Callable:
    """timm's transform for the model, ending in a uint8 (C, H, W) tensor (no normalisation).

    Evaluation: resize the shorter side to floor(size / crop_pct) with the config's
    interpolation, then centre-crop (crop_mode as configured). Training: timm's random resized
    crop (``scale``, default (0.08, 1)) and a horizontal flip with probability ``hflip``.
    """
    from timm.data import create_transform

    config = resolve_config(model, img_size, data_config)
    return create_transform(
        config["input_size"],
        is_training=training,
        scale=scale,
        hflip=hflip,
        color_jitter=None,
        interpolation=config["interpolation"],
        mean=config["mean"],
        std=config["std"],
        crop_pct=config["crop_pct"],
        crop_mode=config.get("crop_mode"),
        use_prefetcher=True,  # timm 1.0 ends with MaybePILToTensor: uint8, unnormalised
    )


# -- reading images -----------------------------------------------------------------------------


def _filename(dataset, index: int) -> str:
    reader = getattr(dataset, "reader", None)
    if reader is None:
        return f"{type(dataset).__name__}[{index}]"
    if hasattr(reader, "samples") and isinstance(reader.samples[index][0], str):
        return reader.samples[index][0]
    return os.path.join(str(getattr(reader, "root", "")), reader.filename(index))


def _load(base, index: int, mode: str):
    """(PIL image in ``mode``, label) of image ``index``, decoded now.

    Read through the reader rather than timm's ``ImageDataset.__getitem__``, which answers a file
    that fails to open with the *next* image (and its label) after a warning.
    """
    from PIL import Image

    reader = getattr(base, "reader", None)
    image, target = (reader[index] if reader is not None else base[index])[:2]
    target = -1 if target is None else target
    if isinstance(image, Image.Image):
        return _to_mode(image, mode), target
    with image, Image.open(image) as opened:  # file objects from the folder or tar reader
        return _to_mode(opened, mode), target


def _to_mode(image, mode: str):
    """A new PIL image in ``mode`` (RGB or L): grayscale, CMYK, palette and 16-bit images included."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # PIL's convert clips 16-bit to 255
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns converting a transparent palette straight to RGB
    return image.convert(mode)  # a copy even in the same mode: the source file is closed after


@contextlib.contextmanager
def _seeded(seed: int, epoch: int, index: int):
    """Python's and torch's RNGs seeded from (seed, epoch, index), restored afterwards."""
    sample_seed = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(sample_seed)  # timm's random resized crop draws from `random`
        torch.manual_seed(sample_seed)  # torchvision's flip draws from torch
        try:
            yield
        finally:
            random.setstate(state)


# -- loaders ------------------------------------------------------------------------------------


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(world_size: int = 1) -> int:
    """DataLoader workers per rank: min(4, cores per rank), or 0 (load in-process) with one core."""
    per_rank = _cores() // max(world_size, 1)
    return min(4, per_rank) if per_rank > 1 else 0


def make_folder_loader(
    dataset: FolderDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    workers: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of uint8 (B, C, H, W) batches and int64 labels over a :class:`FolderDataset`.

    Args:
        dataset: a split, from ``FolderSource.dataset``.
        batch_size: images per batch (per rank).
        shuffle: a new order each epoch, from (seed, epoch).
        workers: loader processes (default :func:`default_workers`); batches do not depend on it.
        seed: seed of the order; augmentation follows the dataset's own seed.
        rank, world_size: this process's share under torchrun (``loader.sampler`` is an
            :class:`EpochSampler`; its ``set_epoch`` sets the epoch).
        drop_last: drop the last incomplete batch (and the indices that do not split evenly).
        pin_memory: pin batches for faster copies to a GPU.
    """
    workers = default_workers(world_size) if workers is None else workers
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world_size, drop_last)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
    )
