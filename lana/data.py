"""Data sets: Fashion-MNIST from its IDX files, or any ImageFolder-style directory.

Images are decoded and resized once, then kept in memory as uint8 (N, C, H, W); batches are
turned into normalised float tensors on the fly, on the device that consumes them. The
training set is split deterministically into ``train`` and a held-out ``score`` split (used to
score candidates); the official test split is kept for final numbers only.
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


def _load_image_folder(root: Path, split: str, img_size: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image

    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise DataNotFoundError(
            f"{root} is not an ImageFolder data set: it has no {' or '.join(missing)}/ directory. "
            "Expected <root>/train/<class>/<image> and <root>/val/<class>/<image>."
        )
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise DataNotFoundError(f"{root / 'train'} has no class directories")
    folder = root / ("val" if split == "test" else "train")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).glob("*")) if (folder / cls).is_dir() else []:
            if path.suffix.lower() not in {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}:
                continue
            with Image.open(path) as im:
                im = im.convert("RGB")
                scale = img_size / min(im.size)  # resize the shorter side, then centre-crop
                im = im.resize((max(img_size, round(im.width * scale)), max(img_size, round(im.height * scale))))
                left, top = (im.width - img_size) // 2, (im.height - img_size) // 2
                im = im.crop((left, top, left + img_size, top + img_size))
                images.append(np.asarray(im).transpose(2, 0, 1))
                labels.append(label)
    if not images:
        raise DataNotFoundError(f"{folder} holds no images")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


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


def load_dataset(
    name: str,
    split: str,
    img_size: int = 32,
    score_size: int = 5000,
    seed: int = 0,
    limit: int | None = None,
) -> ImageDataset:
    """Load one split of a data set into memory.

    Args:
        name: ``fashion-mnist`` or the path of an ImageFolder directory with ``train/`` and ``val/``.
        split: ``train`` (training set minus the score split), ``score`` (held out from the
            training set, for scoring candidates) or ``test`` (official test / ``val/`` split).
        img_size: side of the square images the model sees.
        score_size: images held out from the training set as the ``score`` split.
        seed: seed of the deterministic train/score split.
        limit: keep only the first ``limit`` images (for smoke runs and tests).

    Returns:
        An :class:`ImageDataset` with uint8 images of shape (N, C, img_size, img_size).

    Raises:
        DataNotFoundError: the files are missing; the message says where to put them.
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if name.lower().replace("_", "-") in {"fashion-mnist", "fashionmnist", "fmnist"}:
        images, labels = _load_fashion_mnist_split("test" if split == "test" else "train")
        classes, display = FASHION_MNIST_CLASSES, "fashion-mnist"
    else:
        root = Path(name).expanduser()
        if not root.exists():
            raise DataNotFoundError(
                f"unknown data set {name!r}: not 'fashion-mnist' and no such directory. "
                "Give 'fashion-mnist' or an ImageFolder directory with train/ and val/."
            )
        images, labels, classes = _load_image_folder(root, split, img_size)
        display = str(root)
    if split != "test":
        order = np.random.default_rng(seed).permutation(len(labels))
        if not 0 < score_size < len(labels):
            raise ValueError(f"score_size={score_size} must be between 1 and {len(labels) - 1}")
        keep = order[:score_size] if split == "score" else order[score_size:]
        images, labels = images[keep], labels[keep]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    tensor = _resize(images, img_size)
    log.info("%s/%s: %d images at %d px, %d classes", display, split, len(labels), img_size, len(classes))
    return ImageDataset(display, split, tensor, torch.from_numpy(np.ascontiguousarray(labels)), tuple(classes))


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
