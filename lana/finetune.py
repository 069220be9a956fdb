"""Fine-tuning the student by knowledge distillation from the teacher.

Loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``
(Hinton et al.), over the shared training recipe of :mod:`lana.train` (AdamW, warm-up + cosine,
light augmentation, AMP on CUDA).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from lana.data import ImageDataset
from lana.train import FitResult, Recipe, fit, teacher_logits

__all__ = ["kd_loss", "finetune", "FINETUNE_RECIPE", "lr_factor", "starting_kl"]

log = logging.getLogger(__name__)

# AdamW at a small rate: the student starts close to the teacher and must not be pushed far off.
FINETUNE_RECIPE = Recipe(epochs=1.0, batch_size=128, lr=5e-4, optimizer="adamw", weight_decay=0.01, label_smoothing=0.0)

# The rate follows how far the student starts from its teacher: the KL(teacher || student) on the
# first training images, before any step. At or under KL_NEAR the recipe's rate is scaled by
# NEAR_FACTOR, at or over KL_FAR it is the recipe's, log-linear in between. Screened on W2's score
# split (images 2,000-5,000; 0.5 epoch, one seed each, AMD EPYC; top-1 after at 5e-4 / 2.5e-4 /
# 1.5e-4): the teacher by KD from itself (KL 0) 87.40 / 87.77 / 88.57 from 87.73; the ILP's plan at
# Lite1's budget (KL 0.046) 86.93 / - / 87.73 from 86.57; at Lite0's (KL 0.175) 86.53 / 86.30 /
# 85.73 from 82.23; at 0.5x (KL 0.55) 84.03 / - / 83.17 from 68.47. Near the teacher the full step
# undoes what the student knew; farther off the small one does not get there.
NEAR_FACTOR, KL_NEAR, KL_FAR = 0.3, 0.05, 0.15


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """Hinton's distillation loss."""
    t = temperature
    kl = (
        F.kl_div(
            F.log_softmax(student_logits.float() / t, 1),
            F.log_softmax(teacher_logits.float() / t, 1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits.float(), labels)


@torch.no_grad()
def starting_kl(student: nn.Module, teacher: nn.Module, train_set: ImageDataset, images: int = 512,
                device="cpu", teacher_img_size: int | None = None) -> float:  # fmt: skip
    """KL(teacher || student) (batch mean, temperature 1) on the first ``images`` training images,
    unaugmented, each model on its own normalisation; both left in eval mode."""
    from lana.data import normalize, to_unit
    from lana.train import model_norm

    student.eval(), teacher.eval()
    total, seen = 0.0, 0
    for batch, _labels in train_set.batches(128, images):
        view = to_unit(batch, device)
        target = teacher_logits(teacher, view, teacher_img_size).float()
        logits = student(normalize(view, **model_norm(student))).float()
        kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(target, 1), log_target=True, reduction="sum")
        total, seen = total + float(kl), seen + len(batch)
    return total / max(1, seen)


def lr_factor(kl: float) -> float:
    """The share of the recipe's rate a student starting at ``kl`` from its teacher gets:
    ``NEAR_FACTOR`` at or under ``KL_NEAR``, 1 at or over ``KL_FAR``, log-linear in ``kl`` between."""
    if not math.isfinite(kl) or kl >= KL_FAR:
        return 1.0
    if kl <= KL_NEAR:
        return NEAR_FACTOR
    where = math.log(kl / KL_NEAR) / math.log(KL_FAR / KL_NEAR)
    return NEAR_FACTOR * (1 / NEAR_FACTOR) ** where


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_set: ImageDataset,
    epochs: float = 1.0,
    recipe: Recipe = FINETUNE_RECIPE,
    device="cpu",
    max_steps: int | None = None,
    temperature: float = 2.0,
    alpha: float = 0.9,
    eval_set: ImageDataset | None = None,
    desc: str = "fine-tune",
    teacher_img_size: int | None = None,
    adapt_lr: bool = True,
) -> FitResult:
    """Train ``student`` in place by distillation from ``teacher`` (frozen, eval mode).

    The teacher sees the student's augmented view normalised with its *own* mean/std (timm's
    ``pretrained_cfg``), resized to ``teacher_img_size`` when given and different.

    ``adapt_lr``: scale the recipe's rate by :func:`lr_factor` of the student's
    :func:`starting_kl` (a student that starts near its teacher takes smaller steps).
    """
    from lana.dist import resolve_device

    device = resolve_device(device)
    teacher = teacher.to(device).eval()  # its forward runs under no_grad; its parameters are left as they are

    def loss_fn(logits, labels, x):  # x: the augmented [0, 1] view, before any normalisation
        with torch.no_grad():
            target = teacher_logits(teacher, x, teacher_img_size)
        return kd_loss(logits, target, labels, temperature, alpha)

    if adapt_lr:
        kl = starting_kl(student.to(device), teacher, train_set, device=device, teacher_img_size=teacher_img_size)
        factor = lr_factor(kl)
        log.info("%s: the student starts at KL %.4f from its teacher: lr %g x %.2f", desc, kl, recipe.lr, factor)
        recipe = replace(recipe, lr=recipe.lr * factor)
    recipe = replace(recipe, epochs=epochs, max_steps=max_steps)
    return fit(student, train_set, recipe, device=device, eval_set=eval_set, loss_fn=loss_fn, desc=desc)
