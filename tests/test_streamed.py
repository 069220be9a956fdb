"""Image folders through the pipeline (issue 27): streamed splits, the teacher's head, the score split."""

import numpy as np
import pytest
import torch
from PIL import Image

from lana.data import load_dataset, split_of
from lana.streamed import open_source


def _folder(root, classes=("cat", "dog", "owl"), per_class=12, val=3, size=(48, 40)):
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.jpg", quality=90)
    open_source.cache_clear()
    return root


def test_a_folder_split_streams_uint8_batches_with_its_labels(tmp_path):
    root = _folder(tmp_path / "data")
    train = load_dataset(str(root), "train", 32, score_size=6, model="resnet18")
    score = load_dataset(str(root), "score", 32, score_size=6, model="resnet18")
    assert (len(train), len(score)) == (30, 6) and train.classes == ("cat", "dog", "owl")
    batches = list(train.batches(8))
    assert [b[0].shape[0] for b in batches] == [8, 8, 8, 6]
    assert all(b[0].dtype == torch.uint8 and b[0].shape[1:] == (3, 32, 32) for b in batches)
    assert torch.equal(torch.cat([b[1] for b in batches]), train.labels)
    assert torch.equal(train.head(5), batches[0][0][:5]) and len(train.subset(7)) == 7
    assert not hasattr(train, "images")  # nothing is held in memory


def test_training_batches_by_step_are_seeded_and_match_a_rerun(tmp_path):
    root = _folder(tmp_path / "data")
    train = load_dataset(str(root), "train", 32, model="resnet18")
    steps = [(0, [3, 1, 4]), (1, [1, 5, 9]), (0, [3, 1, 4])]
    first = list(train.batches_at(steps, seed=7))
    again = list(train.batches_at(steps[1:], seed=7))  # a resumed run starts at step 1
    assert torch.equal(first[1], again[0]) and torch.equal(first[0], first[2])
    assert not torch.equal(first[0][1], first[1][0])  # image 1 in epoch 0 and 1: other augmentations


def test_fit_adds_no_augmentation_of_its_own_to_a_streamed_folder(tmp_path, monkeypatch):
    import lana.train as train_module
    from lana.train import Recipe, fit

    root = _folder(tmp_path / "data")
    train = load_dataset(str(root), "train", 32, model="resnet18")
    seen = []
    original = train_module.augment
    monkeypatch.setattr(train_module, "augment", lambda *a, **k: seen.append(1) or original(*a, **k))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    result = fit(model, train, Recipe(epochs=1, batch_size=8, lr=0.01, workers=0), device="cpu")
    assert result.steps == len(train) // 8 and not seen and np.isfinite(result.history[-1]["loss"])


def test_a_small_folder_gets_a_score_split_sized_to_it(tmp_path):
    """4,000 images used to stop on 'score_size=5000'; the default is now min(5000, 10%)."""
    root = _folder(tmp_path / "data", per_class=20)
    built = {"dataset": str(root), "img_size": 32, "model": "resnet18"}
    assert len(split_of(built, "score")) == 6 and len(split_of(built, "train")) == 54
    with pytest.raises(ValueError, match="--score-split"):
        split_of({**built, "score_split": 59}, "train")


def _lite0_build(root, **more):
    from lana.pipeline import BuildConfig

    return BuildConfig(model="tf_efficientnet_lite0", pretrained=True, dataset=str(root), img_size=32, space="tiny",
                       max_steps=1, device="cpu", teacher_epochs=1, **more)  # fmt: skip


def test_a_pretrained_head_that_does_not_fit_is_fine_tuned_first_or_refused(tmp_path, monkeypatch):
    from lana.head import HeadError, fitted_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = _folder(tmp_path / "data")
    config = _lite0_build(root)
    with pytest.raises(HeadError, match="lana teacher --model tf_efficientnet_lite0 --pretrained"):
        fitted_teacher(config, tmp_path / "teacher", refuse=True)
    fitted = fitted_teacher(config, tmp_path / "teacher")
    assert fitted.checkpoint == str(tmp_path / "teacher" / "teacher.safetensors")
    stamp = (tmp_path / "teacher" / "teacher.json").stat().st_mtime_ns
    assert fitted_teacher(config, tmp_path / "teacher") == fitted  # cached: not trained again
    assert (tmp_path / "teacher" / "teacher.json").stat().st_mtime_ns == stamp


def test_imagenet_synset_folders_keep_the_pretrained_head_with_mapped_labels(tmp_path, monkeypatch):
    from lana.head import fitted_teacher

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    synsets = ("n01440764", "n01443537")  # tench, goldfish: outputs 0 and 1 of the ImageNet head
    root = _folder(tmp_path / "data", classes=synsets)
    fitted = fitted_teacher(_lite0_build(root), tmp_path / "teacher")
    assert fitted.synsets and fitted.checkpoint is None and not (tmp_path / "teacher").exists()
    from dataclasses import asdict

    train = split_of(asdict(fitted), "train")
    assert train.num_classes == 1000 and set(train.labels.tolist()) == {0, 1}
