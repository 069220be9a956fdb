"""ImageNet's classes in a folder: class directories named by synset ids (``n01440764``) keep a
pretrained ImageNet head, with their labels mapped to its outputs (issue 27 item 3)."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from lana.stream import FolderError

__all__ = ["imagenet_class_map", "imagenet_synsets_match"]

_SYNSET = re.compile(r"n\d{8}")


@functools.lru_cache(maxsize=4)
def _synsets(subset: str) -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo(subset).label_names())


def imagenet_synsets_match(classes: Iterable[str], subset: str = "imagenet-1k") -> bool:
    """Whether every class name is an ImageNet synset id (``n01440764``) of ``subset``.

    Then a pretrained ImageNet head already knows the folder's classes (with labels mapped by
    :func:`imagenet_class_map`); otherwise the head must be trained for them.
    """
    classes = list(classes)
    known = set(_synsets(subset))
    return bool(classes) and all(_SYNSET.fullmatch(c) is not None and c in known for c in classes)


def imagenet_class_map(classes: Iterable[str], subset: str = "imagenet-1k") -> dict[str, int]:
    """Class name -> the model's output index, for synset-named classes (``open_folder(class_map=...)``)."""
    index = {synset: i for i, synset in enumerate(_synsets(subset))}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise FolderError(f"not ImageNet ({subset}) synsets: {', '.join(unknown[:5])}")
    return {c: index[c] for c in classes}
