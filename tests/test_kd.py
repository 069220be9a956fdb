"""The KD loss hands the teacher its own normalisation (issue 25 item 1)."""

import copy
import logging
import re

import pytest
import timm
import torch

from lana.data import ImageDataset, augment, normalize, to_model_input, to_unit
from lana.finetune import FINETUNE_RECIPE, KL_FAR, KL_NEAR, NEAR_FACTOR, finetune, lr_factor, starting_kl

HALF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # tf_efficientnet_lite's pretrained_cfg
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _tiny(norm: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", num_classes=4)
    model.pretrained_cfg = {**model.pretrained_cfg, **norm}
    return model.eval()


def _images(count: int = 16) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
    return ImageDataset("synthetic", "train", images, torch.arange(count) % 4, ("a", "b", "c", "d"))


def _record(module: torch.nn.Module, store: list):
    return module.register_forward_hook(lambda _m, args, out: store.append((args[0].detach().clone(), out.detach())))


@pytest.mark.parametrize("augmentation", ["none", "crop-flip"])
def test_teacher_sees_its_own_normalisation_in_the_kd_loss(augmentation):
    """A student normalised with ImageNet's mean/std, a teacher with 0.5/0.5: inside the KD loss the
    teacher's input and logits are the teacher's own on the student's (augmented) view."""
    data = _images()
    teacher, student = _tiny(HALF, 0), _tiny(IMAGENET, 1)
    seen_teacher, seen_student = [], []
    hooks = [_record(teacher, seen_teacher), _record(student, seen_student)]
    recipe = FINETUNE_RECIPE.__class__(**{**FINETUNE_RECIPE.__dict__, "augment": augmentation, "batch_size": 8})
    finetune(student, teacher, data, epochs=1.0, recipe=recipe, max_steps=2, adapt_lr=False)  # the loss's calls only
    for hook in hooks:
        hook.remove()
    assert len(seen_teacher) == 2 and len(seen_student) == 2
    teacher.eval()
    for (t_in, t_out), (s_in, _) in zip(seen_teacher, seen_student):
        mean, std = (torch.tensor(IMAGENET[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
        view = s_in * std + mean  # undo the student's normalisation
        expected = normalize(view, **HALF)
        assert torch.allclose(t_in, expected, atol=1e-5), "the teacher got the student's normalisation"
        assert view.min() >= -1e-5 and view.max() <= 1 + 1e-5
        with torch.no_grad():
            assert torch.allclose(t_out, teacher(expected), atol=1e-5)


def test_teacher_logits_on_unaugmented_batches_equal_its_own_input():
    """Without augmentation, each batch the teacher saw is a batch of the data set as the teacher
    itself would be fed it (to_model_input with its own mean/std)."""
    data = _images(8)
    teacher, student = _tiny(HALF, 0), _tiny(IMAGENET, 1)
    seen = []
    hook = _record(teacher, seen)
    recipe = FINETUNE_RECIPE.__class__(**{**FINETUNE_RECIPE.__dict__, "augment": "none", "batch_size": 8})
    finetune(student, teacher, data, epochs=1.0, recipe=recipe, max_steps=1, adapt_lr=False)
    hook.remove()
    own = to_model_input(data.images, **HALF)
    ((t_in, t_out),) = seen
    # shuffled: match each row to the data set's image it came from
    index = torch.cdist(t_in.flatten(1), own.flatten(1)).argmin(1)
    assert sorted(index.tolist()) == list(range(8))
    assert torch.allclose(t_in, own[index], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(t_out, teacher.eval()(own[index]), atol=1e-5)


def test_augmenting_the_view_equals_augmenting_the_normalised_batch():
    """Crop (reflection padding) and flip commute with normalisation: moving the augmentation before
    it changes nothing for a student whose normalisation is the teacher's (W1's figures stand)."""
    images = _images(6).images
    a = augment(to_model_input(images, **IMAGENET), generator=torch.Generator().manual_seed(3))
    b = normalize(augment(to_unit(images), generator=torch.Generator().manual_seed(3)), **IMAGENET)
    assert torch.allclose(a, b, atol=1e-5)


def test_a_student_that_starts_near_its_teacher_is_fine_tuned_at_a_smaller_rate(caplog):
    """The rate follows the student's KL from its teacher before any step: a copy of the teacher
    takes NEAR_FACTOR of the recipe's rate, a student far from it the whole rate, in both
    normalisations (the KL feeds each model its own)."""
    data = _images()
    teacher = _tiny(HALF, 0)
    near = copy.deepcopy(teacher)
    near.pretrained_cfg = {**near.pretrained_cfg, **HALF}
    far = copy.deepcopy(teacher)
    far.pretrained_cfg = {**far.pretrained_cfg, **IMAGENET}
    with torch.no_grad():
        far.fc.weight.mul_(-50)
    assert starting_kl(near, teacher, data) < 1e-6
    assert starting_kl(far, teacher, data) > KL_FAR
    assert lr_factor(0.0) == NEAR_FACTOR and lr_factor(KL_FAR) == lr_factor(1e3) == 1.0
    between = [lr_factor(KL_NEAR * (KL_FAR / KL_NEAR) ** t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert between == sorted(between) and between[0] == pytest.approx(NEAR_FACTOR) and between[-1] == 1.0
    recipe = FINETUNE_RECIPE.__class__(**{**FINETUNE_RECIPE.__dict__, "augment": "none", "batch_size": 8})
    rates = {}
    for name, student in (("near", near), ("far", far)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lana.train"):
            finetune(student, teacher, data, epochs=1.0, recipe=recipe, max_steps=1, desc=name)
        (rates[name],) = (float(m) for r in caplog.records for m in re.findall(r"lr=([0-9.e-]+)", r.getMessage()))
    assert rates["near"] == pytest.approx(NEAR_FACTOR * recipe.lr) and rates["far"] == pytest.approx(recipe.lr)
