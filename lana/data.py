"""Data sets: Fashion-MNIST from its IDX files (in memory), or any image folder (streamed).

Fashion-MNIST is decoded and resized once, then kept in memory as uint8 (N, C, H, W). An image
folder is listed, not loaded: :mod:`lana.streamed` decodes batches through timm's transforms as
they are asked for. Either way batches are uint8 and each consumer turns them into normalised
floats on its device, for its own model (:func:`to_unit`, :func:`normalize`). The training set is
split deterministically into ``train`` and a held-out ``score`` split (used to score
candidates); the test split is kept for final numbers only.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ImageDataset",
    "DataNotFoundError",
    "load_dataset",
    "make_loader",
    "to_model_input",
    "parse_score_split",
    "split_of",
    "is_fashion_mnist",
    "default_img_size",
    "to_unit",
    "normalize",
    "augment",
    "fashion_mnist_dirs",
    "SPLITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "score", "test")
FMNIST_SCORE_IMAGES = 5000  # held out of the 60,000 training images (min(5000, 10%), as for folders)
# ImageNet statistics: the teachers are timm models that expect them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class DataNotFoundError(FileNotFoundError):
    """The data set's files are not where lana looks for them."""


@dataclass(frozen=True)
class ImageDataset(torch.utils.data.Dataset):
    """Images as uint8 (N, C, H, W) in memory, with integer labels.

    Attributes:
        name: data set name (``fashion-mnist`` or the directory it came from).
        split: ``train``, ``score`` or ``test``.
        images: uint8 tensor (N, C, H, W), already resized to the model's input size.
        labels: int64 tensor (N,).
        classes: class names, index = label.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, count: int) -> ImageDataset:
        """The first ``count`` images (the splits are already shuffled deterministically)."""
        return ImageDataset(self.name, self.split, self.images[:count], self.labels[:count], self.classes)

    # The interface every split offers (lana.streamed.StreamedSplit streams an image folder's):
    augmented = False  # the training loader yields the images as they are; fit() augments them

    def batches(self, batch_size: int, limit: int | None = None):
        """(uint8 images, labels) of the first ``limit`` images (all by default), in order."""
        count = len(self) if limit is None else min(limit, len(self))
        for start in range(0, count, batch_size):
            end = min(count, start + batch_size)
            yield self.images[start:end], self.labels[start:end]

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` images, uint8 (count, C, H, W)."""
        return self.images[:count]

    def train_loader(self, batch_size: int, seed: int = 0, drop_last: bool = True, workers: int | None = None):
        """Shuffled training batches, a new order each pass (epoch), seeded."""
        return make_loader(self, batch_size, shuffle=True, workers=workers or 0, seed=seed, drop_last=drop_last)

    def batches_at(self, steps, seed: int = 0):
        """The images of each ``(epoch, indices)`` of ``steps``, as stored (the consumer augments)."""
        return (self.images[indices] for _epoch, indices in steps)


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST's IDX files are looked for, in order."""
    dirs = []
    if os.environ.get("LANA_DATA"):
        env = Path(os.environ["LANA_DATA"])
        dirs += [env, env / "fashion-mnist"]
    dirs.append(Path("/usr/share/datasets/fashion-mnist"))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lana"
    dirs += [cache, cache / "fashion-mnist", cache / "FashionMNIST" / "raw"]
    return dirs


def _find_idx(stem: str) -> Path | None:
    for directory in fashion_mnist_dirs():
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape).copy()  # frombuffer is read-only; torch wants writable memory


def _download_fashion_mnist() -> bool:
    """Fetch Fashion-MNIST through torchvision, only when ``LANA_DOWNLOAD=1`` asks for it (lana
    downloads nothing unasked); False when not asked or when that fails."""
    if os.environ.get("LANA_DOWNLOAD") != "1":
        return False
    cache = fashion_mnist_dirs()[-3]
    try:
        from torchvision.datasets import FashionMNIST

        log.info("Fashion-MNIST not found locally; downloading it to %s", cache)
        for train in (True, False):
            FashionMNIST(str(cache), train=train, download=True)
        return True
    except Exception as error:  # offline, blocked, or a torchvision error: say so, then give up
        log.info("could not download Fashion-MNIST: %s", error)
        return False


def _load_fashion_mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _FMNIST_FILES[split]
    paths = [_find_idx(image_stem), _find_idx(label_stem)]
    if None in paths and _download_fashion_mnist():
        paths = [_find_idx(image_stem), _find_idx(label_stem)]
    if None in paths:
        looked = "\n  ".join(str(d) for d in fashion_mnist_dirs())
        raise DataNotFoundError(
            f"Fashion-MNIST file {image_stem}(.gz) not found. Looked in:\n  {looked}\n"
            "Install the Debian package 'dataset-fashion-mnist' (sudo apt-get install "
            "dataset-fashion-mnist; files go to /usr/share/datasets/fashion-mnist), put the four "
            "IDX files in $LANA_DATA, or set LANA_DOWNLOAD=1 to let torchvision download them."
        )
    images, labels = (_read_idx(p) for p in paths)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} has {images.shape[0]} images but {paths[1]} {labels.shape[0]} labels")
    return images[:, None], labels.astype(np.int64)


def _resize(images: np.ndarray, img_size: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    if tensor.shape[-1] == img_size and tensor.shape[-2] == img_size:
        return tensor
    out = []
    for chunk in tensor.split(4096):  # bounded memory for large sets
        resized = F.interpolate(
            chunk.float(), size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(resized.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def is_fashion_mnist(name: str) -> bool:
    """Whether ``name`` names Fashion-MNIST (else it is an image folder)."""
    return name.lower().replace("_", "-") in {"fashion-mnist", "fashionmnist", "fmnist"}


def _score_count(score_split, available: int) -> int:
    """Fashion-MNIST's held-out score images from a parsed ``--score-split``
    (:func:`parse_score_split`): a count, or a fraction of the training images."""
    if score_split is None:
        return FMNIST_SCORE_IMAGES
    if isinstance(score_split, float):
        if not 0 < score_split < 1:
            raise ValueError(f"--score-split {score_split}: a fraction must be between 0 and 1")
        return max(1, round(score_split * available))
    if isinstance(score_split, int):
        return score_split
    raise ValueError(
        f"--score-split {score_split!r}: Fashion-MNIST's score split is a count or a fraction of its "
        "training images, not a folder"
    )


def parse_score_split(value):
    """``--score-split``: ``5000`` (a count) -> int, ``0.1`` (a fraction) -> float, else a folder (str)."""
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def load_dataset(
    name: str,
    split: str,
    img_size: int | None = 32,
    score_size=None,
    seed: int = 0,
    limit: int | None = None,
    *,
    model: str | None = None,
    synsets: bool = False,
):
    """One split of a data set: Fashion-MNIST in memory, an image folder streamed.

    Args:
        name: ``fashion-mnist`` or an image folder (``ROOT/train/<class>/``, ``ROOT/val/``
            optional, ``ROOT/<class>/``, or a ``.tar``; :func:`lana.folder.open_folder`).
        split: ``train`` (training images minus the score split), ``score`` (held out of them, to
            score candidates) or ``test`` (the official test split, ``val/``, or held out).
        img_size: side of the square images the model sees (None: the model's pretrained size,
            for folders).
        score_size: the score split (``--score-split``): a count, a fraction of the training
            images, or (folders) a separate folder. Default: 5,000 for Fashion-MNIST; min(5000,
            10%) for a folder.
        seed: seed of the held-out splits.
        limit: keep only the first ``limit`` images (the splits are shuffled by ``seed``).
        model: timm name whose pretrained data configuration sets a folder's transforms
            (resize, crop_pct, interpolation); ImageNet's defaults without one.
        synsets: a folder of ImageNet synsets: labels are the ImageNet-1k output indices.

    Returns:
        An :class:`ImageDataset` (Fashion-MNIST) or a :class:`lana.streamed.StreamedSplit`
        (folders): both yield uint8 batches (see ``batches``, ``head``, ``train_loader``).

    Raises:
        DataNotFoundError: the files are missing; the message says where to put them.
        ValueError: an unknown split, or a score split the data set cannot hold (naming the option).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    score_size = parse_score_split(score_size)
    if not is_fashion_mnist(name):
        return _load_folder(name, split, img_size, score_size, seed, limit, model, synsets)
    images, labels = _load_fashion_mnist_split("test" if split == "test" else "train")
    img_size = 32 if img_size is None else img_size
    if split != "test":
        order = np.random.default_rng(seed).permutation(len(labels))
        count = _score_count(score_size, len(labels))
        if not 0 < count < len(labels):
            raise ValueError(
                f"--score-split {score_size}: the score split must hold between 1 and {len(labels) - 1} of "
                f"Fashion-MNIST's {len(labels)} training images"
            )
        keep = order[:count] if split == "score" else order[count:]
        images, labels = images[keep], labels[keep]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    tensor = _resize(images, img_size)
    log.info("fashion-mnist/%s: %d images at %d px, %d classes", split, len(labels), img_size, 10)
    return ImageDataset("fashion-mnist", split, tensor, torch.from_numpy(np.ascontiguousarray(labels)),
                        FASHION_MNIST_CLASSES)  # fmt: skip


def split_of(built: dict, split: str, limit: int | None = None):
    """The ``split`` a build reads, from its configuration (a ``BuildConfig`` as a dict: dataset,
    img_size, seed, score_split, model, synsets): every stage that reads data asks here."""
    return load_dataset(built["dataset"], split, built["img_size"], built.get("score_split"), built.get("seed", 0),
                        limit, model=built.get("model"), synsets=bool(built.get("synsets")))  # fmt: skip


def default_img_size(dataset: str, model: str | None) -> int:
    """``--img-size`` when not given: 32 for Fashion-MNIST, else the model's pretrained input size."""
    if is_fashion_mnist(dataset):
        return 32
    from lana.streamed import data_config

    return int(data_config(model, None)["input_size"][-1])


def _load_folder(name, split, img_size, score_size, seed, limit, model, synsets):
    """A folder's split, streamed (:mod:`lana.streamed`); clear errors for what is not one."""
    from lana.folder import FolderNotFoundError
    from lana.streamed import StreamedSplit, data_config, open_source

    try:
        source = open_source(str(Path(name).expanduser()), score_size, seed, synsets)
    except FolderNotFoundError as error:
        raise DataNotFoundError(f"unknown data set {name!r}: not 'fashion-mnist', and {error}") from None
    data = StreamedSplit(source, split, data_config(model, img_size), limit=limit, outputs=1000 if synsets else None)
    total = len(source.indices[split])  # a limit (head check, --limit) reads fewer: say of how many
    shown = f"{len(data)} of {total}" if len(data) < total else str(total)
    log.info("%s/%s: %s images at %d px, %d classes (streamed)", name, split, shown, data.img_size,
             data.num_classes)  # fmt: skip
    return data


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader over uint8 images; convert batches with :func:`to_model_input`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=workers > 0,
    )


def to_unit(images: torch.Tensor, device: torch.device | str = "cpu", in_chans: int = 3) -> torch.Tensor:
    """uint8 (B, C, H, W) → float in [0, 1] on ``device``; grayscale is repeated to ``in_chans``.

    The view every model of a step shares (augmentation runs on it); each model then normalises
    it for itself with :func:`normalize` (the teacher of a KD loss with its own mean/std).
    """
    x = images.to(device, non_blocking=True)
    if x.shape[1] == 1 and in_chans == 3:
        x = x.expand(-1, 3, -1, -1)
    return x.float().div_(255.0)


def normalize(
    x: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    channels_last: bool = False,
) -> torch.Tensor:
    """A [0, 1] float batch (from :func:`to_unit`) normalised by ``mean``/``std`` (a new tensor)."""
    channels = x.shape[1]
    mean_t = torch.tensor(mean[:channels], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std[:channels], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_model_input(
    images: torch.Tensor,
    device: torch.device | str = "cpu",
    in_chans: int = 3,
    channels_last: bool = False,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 (B, C, H, W) → normalised float on ``device``; grayscale is repeated to ``in_chans``.

    ``mean``/``std`` are the model's (timm's ``pretrained_cfg``, :func:`lana.train.model_norm`);
    ImageNet's by default.
    """
    return normalize(to_unit(images, device, in_chans), mean, std, channels_last)


def augment(x: torch.Tensor, pad: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Light augmentation on a float batch: random crop after reflection padding, horizontal flip."""
    batch, _, height, width = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).tolist()
        dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).tolist()
        out = torch.stack([padded[i, :, dy[i] : dy[i] + height, dx[i] : dx[i] + width] for i in range(batch)])
    else:
        out = x.clone()
    if flip:
        mask = torch.rand(batch, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out
