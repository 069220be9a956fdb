"""Image folders opened through timm's data pipeline: layout, splits; bad files (:mod:`lana.badfiles`) left out.

Opening a folder lists its files (``timm.data.create_dataset``); nothing is decoded until a batch
asks for it (:mod:`lana.stream`), so memory does not grow with the data set.

Layouts understood (class names are directory names, sorted as timm sorts them):

* ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>``: test = val;
* ``ROOT/train/<class>/<image>`` alone, ``ROOT/<class>/<image>`` or ``ROOT.tar``: the test split
  is held out of the training images (seeded, stratified by class, recorded);
* a timm dataset name (``hfds/...``, ``torch/...``) with ``root`` where its package is installed.

The *score* split (held out from training, used to score candidates) is cut from what training
keeps, or read from a separate folder. Transforms, datasets and loaders live in :mod:`lana.stream`
and are re-exported here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lana.badfiles import _bad_indices, scan_bad_files
from lana.stream import (
    EpochSampler,
    FolderDataset,
    FolderError,
    _filename,
    default_workers,
    folder_transform,
    make_folder_loader,
    resolve_config,
)
from lana.synsets import imagenet_class_map, imagenet_synsets_match

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderError",
    "FolderNotFoundError",
    "FolderSource",
    "FolderDataset",
    "EpochSampler",
    "open_folder",
    "split_record",
    "scan_bad_files",
    "resolve_config",
    "folder_transform",
    "make_folder_loader",
    "default_workers",
    "imagenet_synsets_match",
    "imagenet_class_map",
]

log = logging.getLogger(__name__)

# timm's own default is .png/.jpg/.jpeg; the in-memory loader of lana.data also read these
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_VAL_DIRS = ("val", "validation", "valid", "test")
_DEFAULT_HELD_OUT = 5000  # images, and at most 10% of the training images (see _held_out_count)


class FolderNotFoundError(FileNotFoundError):
    """The data set's path does not exist."""


@dataclass(frozen=True, eq=False)
class FolderSource:
    """An opened data set: its classes, and which images make each split (nothing decoded).

    Attributes:
        root: the path (or timm dataset root) given.
        name: timm dataset name, ``""`` for a folder or a ``.tar``.
        classes: class names in label order (with a ``class_map``, labels are the map's values).
        seed: seed of the held-out splits.
        bases: split -> the timm dataset its images come from (``train``, ``score``, ``test``).
        indices: split -> int64 indices into ``bases[split]`` (bad files already left out).
        score_from: ``train`` (held out) or the score folder's path.
        test_from: ``val`` (the folder's own) or ``train`` (held out).
        bad_files: unreadable files found by the scan, left out of every split.
    """

    root: str
    name: str
    classes: tuple[str, ...]
    seed: int
    bases: dict
    indices: dict
    score_from: str
    test_from: str
    bad_files: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dataset(
        self, split: str, transform: Callable, channels: int = 3, seed: int | None = None, limit: int | None = None
    ) -> FolderDataset:
        """The ``train``, ``score`` or ``test`` split through ``transform`` (the first ``limit`` images)."""
        if split not in self.indices:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(self.indices)}")
        seed = self.seed if seed is None else seed
        return FolderDataset(self.bases[split], self.indices[split][:limit], transform, channels, seed)


# -- opening a folder ---------------------------------------------------------------------------


def _check_class_dirs(folder: Path) -> None:
    """A folder must hold class directories; say what is there instead."""
    entries = list(folder.iterdir())
    if not entries:
        raise FolderError(f"{folder} is empty: expected one directory per class, {folder}/<class>/<image>")
    if not any(entry.is_dir() for entry in entries):
        raise FolderError(
            f"{folder} has no class directories ({len(entries)} files directly in it): put each class's "
            f"images in a directory named after the class, {folder}/<class>/<image>"
        )


def _layout(root: Path) -> tuple[Path, Path | None]:
    """(training location, test location or None) of a folder or .tar; clear errors otherwise."""
    if not root.exists():
        raise FolderNotFoundError(
            f"{root} does not exist: give an image folder (ROOT/train/<class>/<image>, ROOT/val/ "
            "optional, or ROOT/<class>/<image>) or a .tar of one"
        )
    if root.is_file():
        if root.suffix.lower() != ".tar":
            raise FolderError(f"{root} is a file, not a folder or a .tar of one")
        return root, None
    if not (root / "train").is_dir():
        _check_class_dirs(root)
        return root, None
    _check_class_dirs(root / "train")
    return root / "train", next((root / d for d in _VAL_DIRS if (root / d).is_dir()), None)


def _create(name: str, location: str, split: str, class_map: dict | None):
    """One timm dataset, listed but not decoded; folder errors in lana's words."""
    from timm.data import create_dataset

    kwargs = {}
    if not name:  # folders and tars: decode in FolderDataset (grayscale, CMYK, 16-bit handled there)
        kwargs["input_img_mode"] = None
        if Path(location).is_dir():
            kwargs["input_key"] = ";".join(IMAGE_EXTENSIONS)  # timm's folder reader: extensions to list
    try:
        dataset = create_dataset(name, root=location, split=split, search_split=False, class_map=class_map, **kwargs)
    except RuntimeError as error:
        if "Found 0 images" not in str(error):
            raise
        raise FolderError(
            f"{location} holds no images in its class directories (extensions {', '.join(IMAGE_EXTENSIONS)})"
        ) from None
    if isinstance(dataset, torch.utils.data.IterableDataset):
        raise FolderError(f"{name} is a stream (iterable): lana needs indexable sources (folders, .tar, hfds/)")
    return dataset


def _class_to_idx(dataset) -> dict[str, int]:
    reader = getattr(dataset, "reader", dataset)
    for attribute in ("class_to_idx", "class_name_to_idx"):
        if isinstance(getattr(reader, attribute, None), dict):
            return dict(getattr(reader, attribute))
    if getattr(dataset, "classes", None):
        return {str(c): i for i, c in enumerate(dataset.classes)}
    raise FolderError(f"{type(reader).__name__} does not name its classes; lana reads folders, .tar and hfds/")


def _targets(dataset) -> np.ndarray:
    """Every image's label, from the listing (no decoding)."""
    reader = getattr(dataset, "reader", dataset)
    if hasattr(reader, "samples") and not hasattr(reader, "targets"):
        return np.asarray([target for _, target in reader.samples], dtype=np.int64)
    for owner in (reader, dataset):
        if getattr(owner, "targets", None) is not None:
            return np.asarray(owner.targets, dtype=np.int64)
    raise FolderError(f"{type(reader).__name__} does not list its labels; lana reads folders, .tar and hfds/")


def _check_classes(location, classes: dict, training: bool) -> None:
    """No image directly under the training folder; no class elsewhere that training lacks."""
    if training and "" in classes:
        raise FolderError(
            f"images lie directly in {location}, outside any class directory: move them into {location}/<class>/"
        )
    if not training and Path(location).is_dir():
        extra = sorted(p.name for p in Path(location).iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise FolderError(f"{location} has classes that training lacks: {', '.join(extra[:5])}")


def _open_bases(root: str, name: str, class_map: dict | None, score_dir: Path | None) -> tuple[dict, str]:
    """split -> timm dataset (None: held out of training), and where the test split comes from."""
    if name:
        train = _create(name, root, "train", class_map)
        return {"train": train, "test": _create(name, root, "validation", class_map), "score": None}, "validation"
    train_location, test_location = _layout(Path(root).expanduser())
    train = _create("", str(train_location), "train", class_map)
    classes = _class_to_idx(train)
    _check_classes(train_location, classes, training=True)
    if class_map:  # timm would silently drop the images of classes the map lacks
        _check_classes(train_location, classes, training=False)
    bases = {"train": train, "test": None, "score": None}
    for split, location in (("test", test_location), ("score", score_dir)):
        if location is not None:
            if location.is_dir():
                _check_class_dirs(location)
            _check_classes(location, classes, training=False)
            bases[split] = _create("", str(location), split, class_map or classes)
    return bases, "val" if test_location is not None else "train"


def _score_folder(score_split) -> Path | None:
    """The folder ``--score-split`` names, or None when it is a fraction (or not given)."""
    if score_split is None or isinstance(score_split, (int, float)):
        return None
    try:
        float(str(score_split))
        return None
    except ValueError:
        path = Path(score_split).expanduser()
    if not path.exists():
        raise FolderNotFoundError(
            f"--score-split {score_split}: no such folder; give a folder or a fraction such as 0.1"
        )
    return path


def _default_count(available: int, num_classes: int) -> int:
    """min(5000, 10% of the images), at least one per class, leaving one per class to train on."""
    return min(_DEFAULT_HELD_OUT, max(num_classes, round(0.1 * available)), available - num_classes)


def _score_count(available: int, num_classes: int, score_images, score_split, test_held: int = 0) -> int:
    """Images the score split holds out of ``available``; an error names the option that fixes it."""
    most = available - num_classes  # one training image per class stays
    if score_images is not None:
        count, asked = int(score_images), f"--score-split {score_images}"
    elif score_split is not None:
        if not 0 < float(score_split) < 1:
            raise FolderError(f"--score-split {score_split}: a fraction must be between 0 and 1, or give a folder")
        count, asked = max(1, round(float(score_split) * available)), f"--score-split {score_split}"
    else:
        count, asked = _default_count(available, num_classes), "the default score split"
    if count < 1 and score_images is not None:
        raise FolderError(f"--score-split {score_images}: the score split needs at least 1 image")
    if 1 <= count <= most:
        return count
    held = f" (after {test_held} held out for testing: a val/ folder keeps them)" if test_held else ""
    if most < 1:
        raise FolderError(
            f"{asked}: {available} training images{held} in {num_classes} classes leave none to score on; "
            "give --score-split DIR (a separate folder of score images) or more images"
        )
    raise FolderError(
        f"{asked} needs {count} of the {available} training images{held}, but each of the {num_classes} classes "
        f"must keep one to train on: give --score-split {most} or fewer (a count), a smaller fraction, "
        "or --score-split DIR (a separate folder of score images)"
    )


def _per_class_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Held-out images per class: proportional to the class sizes (largest remainders), at least one
    per class when ``total`` allows, and never a class's last image."""
    cap = np.maximum(sizes - 1, 0)
    if total > cap.sum():
        raise ValueError(f"cannot hold out {total} images and keep one of each class: {int(cap.sum())} at most")
    quota = total * sizes / max(int(sizes.sum()), 1)
    counts = np.minimum(np.floor(quota).astype(np.int64), cap)
    if total >= np.count_nonzero(cap):
        counts = np.maximum(counts, np.minimum(cap, 1))
    while counts.sum() > total:  # the one-per-class floor overshot: take back from the most over quota
        counts[int(np.argmax(np.where(counts > 0, counts - quota, -np.inf)))] -= 1
    order = np.argsort(-(quota - counts), kind="stable")
    while counts.sum() < total:  # ends: total <= cap.sum() (callers leave one image per class)
        for c in order[counts[order] < cap[order]][: total - int(counts.sum())]:
            counts[c] += 1
    return counts


def _hold_out(indices: np.ndarray, targets: np.ndarray, count: int, rng: np.random.Generator):
    """(kept, held) of ``indices``: ``count`` held out, stratified by class, random within a class."""
    targets = targets[indices]
    sizes = np.bincount(targets) if len(targets) else np.zeros(0, np.int64)
    counts = _per_class_counts(sizes, count)
    order = np.lexsort((rng.random(len(indices)), targets))  # by class, then random
    rank = np.empty(len(order), np.int64)  # position of each image within its class's shuffled run
    rank[order] = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    held = rank < counts[targets]
    return indices[~held], indices[held]


def _good_indices(bases: dict, exclude: Iterable[str] | None, scan: bool, progress: bool) -> tuple[dict, list]:
    """split -> indices of usable images of that split's base; and the bad files found."""
    good, bad_files, seen = {}, [], {}
    exclude = {os.path.abspath(p) for p in exclude} if exclude is not None else None
    for split, base in bases.items():
        if base is None or id(base) in seen:
            good[split] = seen.get(id(base))
            continue
        if exclude is not None:
            bad = [i for i in range(len(base)) if os.path.abspath(_filename(base, i)) in exclude]
        else:
            bad = _bad_indices(base, progress=progress) if scan else []
        bad_files += [_filename(base, i) for i in bad]
        good[split] = seen[id(base)] = np.setdiff1d(np.arange(len(base), dtype=np.int64), bad)
    if bad_files:
        first = ", ".join(bad_files[:5])
        log.warning("%d unreadable or non-image files left out of every split (first: %s)", len(bad_files), first)
    return good, bad_files


def open_folder(
    root: str | os.PathLike,
    *,
    name: str = "",
    score_images: int | None = None,
    score_split: float | str | os.PathLike | None = None,
    seed: int = 0,
    scan: bool = True,
    exclude: Sequence[str] | None = None,
    class_map: dict | None = None,
    progress: bool = True,
) -> FolderSource:
    """List a data set's images and cut its splits; nothing is decoded (except by the scan).

    Args:
        root: an image folder (see the module docstring), a ``.tar``, or a timm dataset root.
        name: a timm dataset name (``hfds/...``, ``torch/...``); ``""`` for folders and tars.
        score_images: images held out of training as the score split (``--score-split N``).
        score_split: a fraction of the training images, or a separate folder (``--score-split``).
            Neither given: min(5000, 10% of the training images), at least one per class.
        seed: seed of the held-out splits (test when there is no ``val/``, then score).
        scan: check every file first (:func:`scan_bad_files`) and leave the bad ones out.
        exclude: files known to be bad (e.g. rank 0's scan, sent to the other ranks): no scan.
        class_map: class name -> label, e.g. :func:`imagenet_class_map` to keep a pretrained head.
        progress: progress bar on the scan.

    Returns:
        A :class:`FolderSource`; ``source.dataset(split, transform)`` reads a split.

    Raises:
        FolderNotFoundError: ``root`` or the score folder does not exist.
        FolderError: no class directories, no images, or too few images for the splits asked.
    """
    if score_images is not None and score_split is not None:
        raise FolderError("give the score split as a count or as a fraction or folder (--score-split), not both")
    score_dir = _score_folder(score_split)
    bases, test_from = _open_bases(str(root), name, class_map, score_dir)
    classes = _class_to_idx(bases["train"])
    good, bad_files = _good_indices(bases, exclude, scan and exclude is None, progress)
    targets = _targets(bases["train"])
    train = good["train"]
    if bases["test"] is None:
        count = _default_count(len(train), len(classes))
        if count < 1:
            raise FolderError(
                f"{root}: {len(train)} images in {len(classes)} classes are too few to hold out a test split; "
                f"add a {root}/val/<class>/ folder"
            )
        train, good["test"] = _hold_out(train, targets, count, np.random.default_rng([seed, 0]))
        bases["test"] = bases["train"]
    if bases["score"] is None:
        test_held = len(good["test"]) if bases["test"] is bases["train"] else 0
        count = _score_count(len(train), len(classes), score_images, score_split, test_held)
        train, good["score"] = _hold_out(train, targets, count, np.random.default_rng([seed, 1]))
        bases["score"] = bases["train"]
    good["train"] = train
    return FolderSource(
        root=str(root),
        name=name,
        classes=tuple(sorted(classes, key=classes.get)),
        seed=seed,
        bases=bases,
        indices={split: good[split] for split in ("train", "score", "test")},
        score_from=str(score_dir) if score_dir is not None else "train",
        test_from=test_from,
        bad_files=tuple(bad_files),
    )


def split_record(source: FolderSource) -> dict:
    """A small JSON-able record of the splits, for the library: counts, seed, where each came from."""
    return {
        "source": source.root,
        "reader": source.name or ("tar" if source.root.endswith(".tar") else "folder"),
        "classes": source.num_classes,
        "seed": source.seed,
        "train": len(source.indices["train"]),
        "score": len(source.indices["score"]),
        "test": len(source.indices["test"]),
        "score_from": source.score_from,
        "test_from": source.test_from,
        "held_out": "stratified by class",
        "bad_files": len(source.bad_files),
    }
