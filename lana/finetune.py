"""Fine-tuning the student by knowledge distillation from the teacher.

Loss: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``
(Hinton et al.), over the shared training recipe of :mod:`lana.train` (AdamW, warm-up + cosine,
light augmentation, AMP on CUDA).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from lana.data import ImageDataset
from lana.train import FitResult, Recipe, fit, teacher_logits

__all__ = ["kd_loss", "finetune", "FINETUNE_RECIPE"]

# AdamW at a small rate: the student starts close to the teacher and must not be pushed far off.
FINETUNE_RECIPE = Recipe(epochs=1.0, batch_size=128, lr=5e-4, optimizer="adamw", weight_decay=0.01, label_smoothing=0.0)


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
) -> FitResult:
    """Train ``student`` in place by distillation from ``teacher`` (frozen, eval mode).

    The teacher sees the student's augmented view normalised with its *own* mean/std (timm's
    ``pretrained_cfg``), resized to ``teacher_img_size`` when given and different.
    """
    from lana.dist import resolve_device

    device = resolve_device(device)
    teacher = teacher.to(device).eval()  # its forward runs under no_grad; its parameters are left as they are

    def loss_fn(logits, labels, x):  # x: the augmented [0, 1] view, before any normalisation
        with torch.no_grad():
            target = teacher_logits(teacher, x, teacher_img_size)
        return kd_loss(logits, target, labels, temperature, alpha)

    recipe = replace(recipe, epochs=epochs, max_steps=max_steps)
    return fit(student, train_set, recipe, device=device, eval_set=eval_set, loss_fn=loss_fn, desc=desc)
