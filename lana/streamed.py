"""One split of an image folder as the pipeline consumes it: decoded when a batch asks for it.

:class:`StreamedSplit` has the interface of :class:`lana.data.ImageDataset` (the in-memory
Fashion-MNIST split), so every stage reads either the same way:

* ``batches(batch_size, limit)``: (uint8 images, labels) in order, evaluation transform
  (resize / centre-crop with the model's crop_pct and interpolation, timm's);
* ``head(count)``: the first ``count`` images in one uint8 tensor (least-squares starts, int8
  calibration: a few hundred images);
* ``train_loader(...)``: one epoch per pass over it, the training transform (timm's random
  resized crop and flip) already applied (``augmented`` is True: ``fit`` adds nothing);
* ``batches_at(steps)``: given training images, augmented as the loader would (the block
  distillation resumes at any step, so it asks for its batches by index).

Memory is bounded by the batches in flight, whatever the folder's size.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from lana.folder import (
    FolderSource,
    _class_to_idx,
    _open_bases,
    _targets,
    imagenet_class_map,
    imagenet_synsets_match,
    open_folder,
)
from lana.stream import default_workers, folder_transform, make_folder_loader

__all__ = ["StreamedSplit", "open_source", "data_config", "synset_labels"]

log = logging.getLogger(__name__)


def data_config(model: str | None, img_size: int | None) -> dict:
    """timm's pretrained data configuration of the model named ``model`` (its mean/std, crop_pct,
    interpolation), at ``img_size`` when given; ImageNet's defaults without a model."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model) if model else None
    # timm's defaults (ImageNet mean/std, 224 px, crop_pct 0.875, bilinear) without a model
    config = resolve_data_config(pretrained_cfg=cfg.to_dict() if cfg is not None else {"input_size": (3, 224, 224)})
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], int(img_size), int(img_size))
    return config


def synset_labels(root: str, model: str | None) -> bool:
    """Whether a folder's classes are ImageNet synsets (``n01440764``) and ``model`` an ImageNet-1k
    classifier: then its pretrained head already knows them (labels are mapped to its outputs)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model) if model else None
    if cfg is None or int(getattr(cfg, "num_classes", 0) or 0) != 1000:
        return False
    return imagenet_synsets_match(_class_names(root))


@functools.lru_cache(maxsize=8)
def _class_names(root: str) -> tuple[str, ...]:
    """A folder's class names, from its listing alone (no bad-file scan, no splits)."""
    classes = _class_to_idx(_open_bases(root, "", None, None)[0]["train"])
    return tuple(sorted(classes, key=classes.get))


@functools.lru_cache(maxsize=8)
def open_source(root: str, score_split, seed: int, synsets: bool = False) -> FolderSource:
    """The folder opened once per process (listing and bad-file scan are the slow part): every
    split of a build is cut from the same listing. ``score_split``: a count (int), a fraction
    (float) or a folder (str); ``synsets``: labels are ImageNet-1k output indices."""
    class_map = imagenet_class_map(_class_names(root)) if synsets else None
    count = score_split if isinstance(score_split, int) else None
    other = None if isinstance(score_split, int) else score_split
    return open_folder(root, score_images=count, score_split=other, seed=seed, class_map=class_map)


class StreamedSplit:
    """The ``train``, ``score`` or ``test`` split of an opened folder, at ``img_size``.

    Attributes:
        name, split, classes, labels (int64 tensor, from the listing): as ``ImageDataset``'s;
            ``num_classes`` is the head's size (1000 for a folder of ImageNet synsets).
        img_size: side of the square images every batch holds.
        config: timm's data configuration the transforms follow.
        augmented: True: the training loader augments (timm's train transform).
    """

    augmented = True

    def __init__(self, source: FolderSource, split: str, config: dict, limit: int | None = None,
                 workers: int | None = None, outputs: int | None = None):  # fmt: skip
        self.source, self.split, self.config, self.workers = source, split, dict(config), workers
        self._outputs = outputs  # ImageNet synsets: the labels are the 1000-way head's outputs
        self.name, self.classes = source.root, source.classes
        self._indices = np.asarray(source.indices[split][:limit], dtype=np.int64)
        self.labels = torch.from_numpy(_targets(source.bases[split])[self._indices])
        self.img_size = int(config["input_size"][-1])
        self._eval = folder_transform(training=False, data_config=self.config)
        self._train = folder_transform(training=True, data_config=self.config) if split == "train" else None

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"StreamedSplit({self.name!r}, {self.split}, {len(self)} images at {self.img_size} px)"

    @property
    def num_classes(self) -> int:
        """Outputs a model of this data set has: the classes, or 1000 for ImageNet synsets."""
        return self._outputs or len(self.classes)

    def subset(self, count: int) -> StreamedSplit:
        """The first ``count`` images (the split's order is already shuffled by its seed)."""
        out = object.__new__(StreamedSplit)
        out.__dict__.update(self.__dict__)
        out._indices = self._indices[:count]
        out.labels = self.labels[:count]
        return out

    def _dataset(self, training: bool, seed: int | None = None):
        from lana.stream import FolderDataset

        transform = self._train if training else self._eval
        if transform is None:
            raise ValueError(f"the {self.split} split is not trained on: no training transform")
        base = self.source.bases[self.split]
        return FolderDataset(base, self._indices, transform, seed=self.source.seed if seed is None else seed)

    def batches(self, batch_size: int, limit: int | None = None):
        """(uint8 (B, C, H, W), int64 labels) of the first ``limit`` images, in order, evaluation transform."""
        count = len(self) if limit is None else min(limit, len(self))
        dataset = self._dataset(training=False)
        if count < len(self):
            dataset = torch.utils.data.Subset(dataset, range(count))
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             num_workers=self._workers(count, batch_size))  # fmt: skip
        yield from loader

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` images, uint8 (count, C, H, W), evaluation transform."""
        parts = [images for images, _ in self.batches(min(256, max(1, count)), limit=count)]
        return torch.cat(parts) if parts else torch.empty(0, 3, self.img_size, self.img_size, dtype=torch.uint8)

    def train_loader(self, batch_size: int, seed: int = 0, drop_last: bool = True, workers: int | None = None,
                     rank: int = 0, world_size: int = 1):  # fmt: skip
        """Training batches, a new order and new augmentations each pass (epoch), seeded."""
        workers = self.workers if workers is None else workers
        return make_folder_loader(self._dataset(training=True, seed=seed), batch_size, shuffle=True, workers=workers,
                                  seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)  # fmt: skip

    def batches_at(self, steps, seed: int = 0):
        """The training images of each ``(epoch, indices)`` of ``steps``, augmented as that epoch of
        :meth:`train_loader` would (the same sample seeds), decoded ahead by the loader's workers."""
        keys = _Keys(steps)
        return torch.utils.data.DataLoader(self._dataset(training=True, seed=seed), batch_sampler=keys,
                                           num_workers=self._workers(len(keys) * 2, 1),
                                           collate_fn=_images)  # fmt: skip

    def _workers(self, count: int, batch_size: int) -> int:
        if self.workers is not None:
            return self.workers
        return default_workers() if count > 2 * batch_size else 0  # a few batches: no processes to start


class _Keys:
    """A batch sampler of given ``(epoch, indices)`` batches: the ``(epoch, index)`` keys of each."""

    def __init__(self, steps):
        self.steps = [(int(epoch), [int(i) for i in indices]) for epoch, indices in steps]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self):
        return ([(epoch, i) for i in indices] for epoch, indices in self.steps)


def _images(samples) -> torch.Tensor:
    return torch.stack([image for image, _label in samples])
