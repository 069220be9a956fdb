"""The image-folder path: timm's transforms, splits, bad files, loaders that ignore worker counts."""

import io
import logging
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from lana.folder import (
    EpochSampler,
    FolderError,
    FolderNotFoundError,
    folder_transform,
    imagenet_class_map,
    imagenet_synsets_match,
    make_folder_loader,
    open_folder,
    resolve_config,
    scan_bad_files,
    split_record,
)

# sizes (width, height) of the test images: landscape, portrait, square, odd
SIZES = [(40, 30), (30, 47), (36, 36), (53, 41)]


def _photo(seed: int, size=(40, 30)) -> Image.Image:
    """A smooth colour image (JPEG-friendly, so resizing differences are not hidden by noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]] / max(size)
    phase = rng.uniform(0, 6, 3)
    pixels = 127 + 120 * np.sin(6 * x[..., None] + 4 * y[..., None] + phase)
    return Image.fromarray(pixels.astype(np.uint8))


def _folder(root, counts, val=None, seed=0):
    """ROOT/train/c<k>/<i>.jpg with counts[k] images per class (and ROOT/val/ with ``val`` each)."""
    for split, per_class in (("train", counts), ("val", [val] * len(counts) if val else [])):
        for klass, count in enumerate(per_class):
            (root / split / f"c{klass}").mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = SIZES[i % len(SIZES)]
                _photo(seed + 1000 * klass + i + (500 if split == "val" else 0), size).save(
                    root / split / f"c{klass}" / f"{i}.jpg", quality=95
                )
    return root


def _reference(path, size: int, crop_pct: float, resample) -> torch.Tensor:
    """Hand-written evaluation view: shorter side to int(size / crop_pct), centre crop of size."""
    image = Image.open(path).convert("RGB")
    scale = int(size / crop_pct)
    width, height = image.size
    new = (scale, int(scale * height / width)) if width <= height else (int(scale * width / height), scale)
    image = image.resize(new, resample=resample)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@pytest.mark.parametrize(
    "interpolation,crop_pct,resample",
    [("bicubic", 0.875, Image.BICUBIC), ("bilinear", 0.95, Image.BILINEAR), ("bicubic", 1.0, Image.BICUBIC)],
)
def test_eval_batch_equals_hand_written_resize_and_centre_crop(tmp_path, interpolation, crop_pct, resample):
    root = _folder(tmp_path / "data", [4, 4], val=4)
    source = open_folder(root, scan=False)
    config = {"input_size": (3, 224, 224), "interpolation": interpolation, "crop_pct": crop_pct}
    transform = folder_transform(data_config=config, training=False, img_size=24)
    dataset = source.dataset("test", transform)
    images, labels = next(iter(make_folder_loader(dataset, batch_size=len(dataset), workers=0)))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 24, 24) and labels.dtype == torch.int64
    expected = torch.stack([_reference(dataset.filename(i), 24, crop_pct, resample) for i in range(len(dataset))])
    assert (images.int() - expected.int()).abs().max() <= 1


def test_model_config_sets_crop_and_img_size_overrides_its_size():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    config = resolve_config(model, img_size=40)
    assert config["input_size"] == (3, 40, 40)
    assert config["crop_pct"] == model.pretrained_cfg["crop_pct"]
    assert config["interpolation"] == model.pretrained_cfg["interpolation"]


def test_grayscale_cmyk_palette_and_16_bit_images_become_rgb(tmp_path):
    root = _folder(tmp_path / "data", [4, 4])
    (root / "train" / "a").mkdir(parents=True)
    (root / "train" / "b").mkdir(parents=True)
    gray = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (24, 1))
    Image.fromarray(gray).save(root / "train" / "a" / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 256).save(root / "train" / "a" / "gray16.png")
    cmyk = _photo(1, (24, 24)).convert("CMYK")
    cmyk.save(root / "train" / "b" / "cmyk.jpg", quality=100)
    _photo(2, (24, 24)).convert("P").save(root / "train" / "b" / "palette.png")
    source = open_folder(root, scan=False)
    transform = folder_transform(data_config={"input_size": (3, 24, 24), "crop_pct": 1.0}, training=False)
    base = source.bases["train"]
    everything = source.dataset("train", transform)
    everything.indices = np.arange(len(base))  # every file, whatever the split
    by_name = {everything.filename(i).rsplit("/", 1)[-1]: everything[i][0] for i in range(len(base))}
    assert all(x.shape == (3, 24, 24) and x.dtype == torch.uint8 for x in by_name.values())
    for name in ("gray.png", "gray16.png"):  # all three channels are the gray level
        assert torch.equal(by_name[name][0], by_name[name][1]) and torch.equal(by_name[name][1], by_name[name][2])
        assert (by_name[name][0].int() - torch.from_numpy(gray).int()).abs().max() <= 1
    expected_cmyk = np.asarray(Image.open(root / "train" / "b" / "cmyk.jpg").convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(by_name["cmyk.jpg"], torch.from_numpy(expected_cmyk.copy()))


def test_bad_files_are_listed_before_training_and_left_out(tmp_path, caplog):
    root = _folder(tmp_path / "data", [6, 6])
    (root / "train" / "c0" / "text.jpg").write_text("not an image")
    (root / "train" / "c1" / "empty.png").write_bytes(b"")
    whole = io.BytesIO()
    _photo(3, (48, 48)).save(whole, "JPEG")
    (root / "train" / "c1" / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    (root / "train" / "c0" / "notes.txt").write_text("ignored: not an image extension")
    source = open_folder(root, scan=False)
    bad = sorted(p.rsplit("/", 1)[-1] for p in scan_bad_files(source.bases["train"], progress=False))
    assert bad == ["empty.png", "text.jpg", "truncated.jpg"]
    with caplog.at_level(logging.WARNING, logger="lana.folder"):
        source = open_folder(root, progress=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 unreadable" in warnings[0].getMessage()
    assert len(source.bad_files) == 3 and split_record(source)["bad_files"] == 3
    kept = sum(len(source.indices[s]) for s in ("train", "score", "test"))
    assert kept == 12  # every good image in exactly one split
    transform = folder_transform(data_config={"input_size": (3, 16, 16)}, training=True)
    for split in ("train", "score", "test"):  # a whole epoch reads without a decode error
        for _ in make_folder_loader(source.dataset(split, transform), batch_size=4, workers=0):
            pass


def test_an_unscanned_bad_file_fails_by_name_instead_of_becoming_its_neighbour(tmp_path):
    root = _folder(tmp_path / "data", [3, 3])
    (root / "train" / "c1" / "0.jpg").write_text("not an image")  # timm's dataset would load 1.jpg instead
    source = open_folder(root, scan=False)
    dataset = source.dataset("train", folder_transform(data_config={"input_size": (3, 8, 8)}, training=False))
    dataset.indices = np.arange(len(source.bases["train"]))
    bad = [i for i in range(len(dataset)) if dataset.filename(i).endswith("c1/0.jpg")]
    with pytest.raises(OSError, match="c1/0.jpg"):
        dataset[bad[0]]


def test_splits_are_deterministic_stratified_and_recorded(tmp_path):
    root = _folder(tmp_path / "data", [12, 8, 20], val=2)
    first, again = open_folder(root, seed=3, scan=False), open_folder(root, seed=3, scan=False)
    other = open_folder(root, seed=4, scan=False)
    for split in ("train", "score", "test"):
        assert np.array_equal(first.indices[split], again.indices[split])
    assert not np.array_equal(first.indices["score"], other.indices["score"])
    assert set(first.indices["train"]).isdisjoint(first.indices["score"])
    labels = np.asarray([t for _, t in first.bases["train"].reader.samples])
    assert sorted(set(labels[first.indices["score"]])) == [0, 1, 2]  # every class scored
    record = split_record(first)
    assert record == {
        **record,
        **{"train": 36, "score": 4, "test": 6, "seed": 3, "classes": 3, "score_from": "train", "test_from": "val"},
    }
    assert len(first.dataset("train", lambda image: image, limit=5)) == 5
    sized = open_folder(root, score_split=0.25, scan=False)
    assert (
        len(sized.indices["score"]) == 10 and len(open_folder(root, score_images=7, scan=False).indices["score"]) == 7
    )


@pytest.mark.parametrize(
    "options,named",
    [
        ({"score_images": 38}, ("--score-split 37 or fewer", "fraction")),
        ({"score_split": 0.99}, ("--score-split 37 or fewer", "fraction")),
        ({"score_images": 0}, ("--score-split 0", "at least 1")),
        ({"score_images": 5, "score_split": 0.1}, ("count", "--score-split", "not both")),
    ],
)
def test_a_score_split_the_data_cannot_give_names_the_option_that_fixes_it(tmp_path, options, named):
    root = _folder(tmp_path / "data", [12, 8, 20], val=2)
    with pytest.raises(FolderError) as error:
        open_folder(root, scan=False, **options)
    assert all(words in str(error.value) for words in named), str(error.value)


def test_a_tiny_folder_points_to_a_separate_score_folder(tmp_path):
    root = _folder(tmp_path / "data", [2, 2])  # the test split takes one image per class, training keeps one
    with pytest.raises(FolderError, match=r"--score-split DIR.*") as error:
        open_folder(root, scan=False)
    assert "val/" in str(error.value)


def test_a_folder_without_val_holds_out_a_seeded_test_split(tmp_path):
    root = _folder(tmp_path / "data", [10, 10, 10])
    source = open_folder(root, seed=1, scan=False)
    train, score, test = (set(source.indices[s].tolist()) for s in ("train", "score", "test"))
    assert train | score | test == set(range(30)) and len(train) + len(score) + len(test) == 30
    assert len(test) == 3 and len(score) == 3 and source.test_from == "train"
    assert np.array_equal(source.indices["test"], open_folder(root, seed=1, scan=False).indices["test"])
    flat = open_folder(root / "train", seed=1, scan=False)  # ROOT/<class>/<image> works the same
    assert len(flat.indices["test"]) == 3 and flat.classes == ("c0", "c1", "c2")


def test_a_separate_score_folder_and_a_tar_are_read(tmp_path):
    root = _folder(tmp_path / "data", [6, 6], val=2)
    score = _folder(tmp_path / "score", [3, 3], seed=7) / "train"
    source = open_folder(root, score_split=str(score), scan=False)
    assert len(source.indices["score"]) == 6 and len(source.indices["train"]) == 12
    assert split_record(source)["score_from"] == str(score)
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(root / "train", arcname=".")
    from_tar = open_folder(tmp_path / "data.tar", progress=False)
    assert from_tar.classes == ("c0", "c1") and sum(len(i) for i in from_tar.indices.values()) == 12
    x, y = from_tar.dataset("train", folder_transform(data_config={"input_size": (3, 8, 8)}, training=False))[0]
    assert x.shape == (3, 8, 8) and y in (0, 1)


def test_unusable_folders_get_clear_errors(tmp_path):
    with pytest.raises(FolderNotFoundError, match="does not exist"):
        open_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match="is empty"):
        open_folder(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    _photo(0).save(tmp_path / "flat" / "a.jpg")
    with pytest.raises(FolderError, match="no class directories"):
        open_folder(tmp_path / "flat")
    (tmp_path / "noimages" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(FolderError, match="holds no images"):
        open_folder(tmp_path / "noimages")
    stray = _folder(tmp_path / "stray", [3, 3])
    _photo(0).save(stray / "train" / "loose.jpg")
    with pytest.raises(FolderError, match="outside any class directory"):
        open_folder(stray)


def test_opening_a_folder_decodes_no_image(tmp_path, monkeypatch):
    root = _folder(tmp_path / "data", [5, 5], val=2)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    source = open_folder(root, scan=False)
    dataset = source.dataset("train", folder_transform(data_config={"input_size": (3, 8, 8)}, training=True))
    make_folder_loader(dataset, batch_size=2, workers=0)
    assert opened == []
    dataset[0]
    assert len(opened) == 1


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    root = _folder(tmp_path / "data", [6, 6], val=2)
    source = open_folder(root, scan=False)
    transform = folder_transform(data_config={"input_size": (3, 16, 16)}, training=True, scale=(0.2, 1.0))

    def epochs(workers):
        loader = make_folder_loader(source.dataset("train", transform), batch_size=4, shuffle=True, workers=workers)
        return [torch.cat([x.flatten() for x, _ in loader]) for _ in range(2)]

    serial, parallel = epochs(0), epochs(2)
    assert torch.equal(serial[0], parallel[0]) and torch.equal(serial[1], parallel[1])
    assert not torch.equal(serial[0], serial[1])  # a new order and new crops each epoch


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_share_the_indices(shuffle):
    shards = [list(EpochSampler(10, shuffle, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [len(EpochSampler(10, shuffle, 1, r, 3)) for r in range(3)]
    indices = [i for shard in shards for _, i in shard]
    assert set(indices) == set(range(10))
    if shuffle:  # padded: ranks take equal steps
        assert [len(s) for s in shards] == [4, 4, 4]
    else:  # evaluation counts each image once
        assert sorted(indices) == list(range(10))


def test_imagenet_synsets_are_recognised():
    assert imagenet_synsets_match(["n01440764", "n01443537"])
    assert not imagenet_synsets_match(["n01440764", "cat"])
    assert not imagenet_synsets_match(["n99999999"])
    assert not imagenet_synsets_match([])
    assert imagenet_class_map(["n01443537", "n01440764"]) == {"n01443537": 1, "n01440764": 0}


def test_make_folders_writes_a_deterministic_tree(tmp_path):
    from bench.make_folders import make_folders

    counts = make_folders(tmp_path / "a", images=12, classes=3, size=24, val_fraction=0.25, seed=5)
    make_folders(tmp_path / "b", images=12, classes=3, size=24, val_fraction=0.25, seed=5)
    assert counts["train"] == 9 and counts["val"] == 3
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert len(files) == 12
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    source = open_folder(tmp_path / "a", scan=False)
    assert source.classes == ("class_000", "class_001", "class_002")
