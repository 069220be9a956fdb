"""Synthetic ImageFolder trees of colour JPEGs, for the image-folder benchmarks of issue 27.

    python3 -m bench.make_folders OUT --images 5000 --classes 10 --size 256 [--val-fraction 0.1]

Class k shows one of the eight colour photos bundled with scikit-image (``skimage.data``, k mod 8)
under a colour cast of its own; every image is a random crop of it (position, scale, aspect),
rotated by up to 15 degrees, colour-jittered and flipped half the time. Everything is seeded by
(seed, class, index), so a tree is the same whatever ``--workers``. Writes
``OUT/train/<class>/<class>_<index>.jpg`` and ``OUT/val/...`` (no ``val/`` with --val-fraction 0).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import time
from pathlib import Path

import numpy as np

__all__ = ["make_folders", "main"]

# colour photos shipped inside scikit-image's wheel (no download)
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "motorcycle",
)


@functools.lru_cache(maxsize=len(PHOTOS))
def _photo(name: str):
    from PIL import Image
    from skimage import data

    array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    return Image.fromarray(array).convert("RGB")


def _class_names(classes: int, synsets: bool) -> list[str]:
    if not synsets:
        return [f"class_{k:03d}" for k in range(classes)]
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names()[:classes])


def _image(klass: int, index: int, size: int, seed: int):
    """Image ``index`` of class ``klass``: a jittered crop of the class's photo, shorter side ``size``."""
    from PIL import Image, ImageEnhance

    photo = _photo(PHOTOS[klass % len(PHOTOS)])
    cast = 0.55 + 0.9 * np.random.default_rng([seed, klass]).random(3)  # the class's colour cast
    rng = np.random.default_rng([seed, klass, index])
    short = min(photo.size)
    side = int(short * rng.uniform(0.4, 0.9))
    width, height = (side, int(side * rng.uniform(0.75, 1.0))) if rng.random() < 0.5 else (int(side * 0.8), side)
    left = int(rng.integers(0, photo.width - width + 1))
    top = int(rng.integers(0, photo.height - height + 1))
    image = photo.crop((left, top, left + width, top + height))
    image = image.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, fillcolor=(127, 127, 127))
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.75, 1.25)))
    pixels = np.asarray(image, dtype=np.float32) * (cast * rng.uniform(0.95, 1.05, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def _write(task) -> None:
    path, klass, index, size, seed = task
    _image(klass, index, size, seed).save(path, quality=90)


def make_folders(
    out: str | Path,
    images: int,
    classes: int,
    size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 1,
    synsets: bool = False,
) -> dict:
    """Write a synthetic ImageFolder tree; returns the counts written.

    Args:
        out: the tree's root (``train/`` and ``val/`` go under it).
        images: images in all, spread evenly over the classes.
        classes: number of classes.
        size: shorter side of every image, in pixels (the longer is up to 4/3 of it).
        val_fraction: share of each class written to ``val/`` (0: no ``val/``).
        seed: the tree's seed.
        workers: processes writing JPEGs.
        synsets: name the classes by the first ImageNet-1k synsets (``n01440764``, ...).
    """
    if not 0 <= val_fraction < 1 or classes < 1 or images < classes:
        raise ValueError("need images >= classes >= 1 and 0 <= val_fraction < 1")
    names, out, tasks = _class_names(classes, synsets), Path(out), []
    counts = {"train": 0, "val": 0}
    for klass, name in enumerate(names):
        per_class = images // classes + (klass < images % classes)
        n_val = round(per_class * val_fraction)
        for index in range(per_class):
            split = "val" if index < n_val else "train"
            (out / split / name).mkdir(parents=True, exist_ok=True)
            tasks.append((out / split / name / f"{name}_{index:06d}.jpg", klass, index, size, seed))
            counts[split] += 1
    if workers > 1:
        with multiprocessing.Pool(workers) as pool:
            for _ in pool.imap_unordered(_write, tasks, chunksize=64):
                pass
    else:
        for task in tasks:
            _write(task)
    return {**counts, "classes": classes, "size": size, "seed": seed}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="root of the tree to write")
    parser.add_argument("--images", type=int, default=5000, help="images in all (train + val)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="shorter side in pixels")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share written to val/ (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes writing JPEGs")
    parser.add_argument("--synsets", action="store_true", help="name classes by ImageNet-1k synsets")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = make_folders(
        args.out, args.images, args.classes, args.size, args.val_fraction, args.seed, args.workers, args.synsets
    )
    print(
        f"wrote {counts['train']} train + {counts['val']} val JPEGs in {args.classes} classes to {args.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return counts


if __name__ == "__main__":
    main()
