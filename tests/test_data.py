"""Fashion-MNIST and ImageFolder loading, splits, normalisation."""

import numpy as np
import pytest
import torch

from lana.data import DataNotFoundError, augment, load_dataset, to_model_input


@pytest.fixture(scope="module")
def fmnist_train():
    return load_dataset("fashion-mnist", "train", img_size=32)


def test_fashion_mnist_splits_are_disjoint_and_sized(fmnist_train):
    score = load_dataset("fashion-mnist", "score", img_size=32)
    test = load_dataset("fashion-mnist", "test", img_size=32)
    assert len(fmnist_train) + len(score) == 60000 and len(score) == 5000
    assert len(test) == 10000
    assert fmnist_train.images.dtype == torch.uint8 and fmnist_train.images.shape[1:] == (1, 32, 32)
    # disjoint: no score image (as bytes) occurs in the first train images
    train_keys = {bytes(im.numpy()) for im in fmnist_train.images[:20000]}
    assert not any(bytes(im.numpy()) in train_keys for im in score.images[:500])


def test_split_is_deterministic():
    a = load_dataset("fashion-mnist", "score", img_size=28, limit=50)
    b = load_dataset("fashion-mnist", "score", img_size=28, limit=50)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    c = load_dataset("fashion-mnist", "score", img_size=28, limit=50, seed=1)
    assert not torch.equal(a.labels, c.labels)


def test_resize_and_grayscale_to_three_channels(fmnist_train):
    x = to_model_input(fmnist_train.images[:8], in_chans=3)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and abs(float(x.mean())) < 3
    small = load_dataset("fashion-mnist", "test", img_size=64, limit=4)
    assert small.images.shape == (4, 1, 64, 64)


def test_augment_keeps_shape_and_changes_pixels():
    x = torch.randn(16, 3, 32, 32)
    y = augment(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)


def test_missing_fashion_mnist_names_the_debian_package(monkeypatch, tmp_path):
    import lana.data as data

    monkeypatch.setattr(data, "fashion_mnist_dirs", lambda: [tmp_path])
    monkeypatch.setattr(data, "_download_fashion_mnist", lambda: False)
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "train")


def test_image_folder_round_trip(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    train = load_dataset(str(tmp_path), "train", img_size=32, score_size=2)
    test = load_dataset(str(tmp_path), "test", img_size=32)
    assert train.classes == ("cat", "dog") and len(train) == 4 and len(test) == 6
    assert train.head(4).shape == (4, 3, 32, 32) and train.head(4).dtype == torch.uint8


def test_image_folder_without_images_is_a_clear_error(tmp_path):
    from lana.folder import FolderError

    (tmp_path / "images").mkdir()
    with pytest.raises(FolderError, match="no images"):
        load_dataset(str(tmp_path), "train")


def test_unknown_split():
    with pytest.raises(ValueError, match="splits are"):
        load_dataset("fashion-mnist", "validation")
