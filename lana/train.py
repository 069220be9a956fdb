"""The training loop shared by the teacher and the student's fine-tuning, and evaluation.

One recipe (SGD or AdamW, warm-up then cosine, label smoothing, light augmentation, AMP and
channels_last on CUDA) so that teacher, students and baselines are trained alike; under torchrun
the same loop runs data-parallel (DDP).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lana.data import ImageDataset, augment, normalize, to_model_input, to_unit
from lana.dist import resolve_device

__all__ = ["Recipe", "FitResult", "fit", "evaluate", "predict_logits", "model_norm", "teacher_logits"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How to train. Defaults are the teacher's recipe for 32 px Fashion-MNIST on a CPU."""

    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 0.1  # SGD with batch 128; AdamW wants ~1e-3
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    warmup_frac: float = 0.03
    label_smoothing: float = 0.1
    augment: str = "crop-flip"  # crop-flip, flip or none
    max_steps: int | None = None
    workers: int | None = None  # DataLoader workers; None: 0 in memory, min(4, cores) streamed
    seed: int = 0


@dataclass(frozen=True)
class FitResult:
    steps: int
    seconds: float
    history: tuple[dict, ...]  # one entry per epoch: epoch, loss, top1 (if evaluated), seconds
    losses: tuple[float, ...] = ()  # every step's loss (over all ranks under torchrun)


def model_norm(model: nn.Module) -> dict:
    """The input normalisation a timm model expects (its pretrained_cfg), ImageNet's by default."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out = {}
    if cfg.get("mean"):
        out["mean"] = tuple(cfg["mean"])
    if cfg.get("std"):
        out["std"] = tuple(cfg["std"])
    return out


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    # no weight decay on norms and biases (1-D parameters), as timm does
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; choose sgd or adamw")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int = 256,
    device="cpu",
    in_chans: int = 3,
    limit: int | None = None,
) -> torch.Tensor:
    """Logits of ``model`` on the first ``limit`` images of ``dataset`` (all by default), on the CPU."""
    device = torch.device(device)
    model.eval().to(device)
    norm = model_norm(model)
    outs = []
    for images, _labels in dataset.batches(batch_size, limit):
        x = to_model_input(images, device, in_chans, **norm)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs.append(model(x).float().cpu())
    return torch.cat(outs)


def evaluate(
    model: nn.Module, dataset: ImageDataset, batch_size: int = 256, device="cpu", limit: int | None = None
) -> float:
    """Top-1 accuracy in percent on the first ``limit`` images (all by default)."""
    logits = predict_logits(model, dataset, batch_size, device, limit=limit)
    labels = dataset.labels[: logits.shape[0]]
    return float((logits.argmax(1) == labels).float().mean() * 100.0)


def _view(images: torch.Tensor, how: str, device, generator: torch.Generator) -> torch.Tensor:
    """A batch's augmented view in [0, 1], before any model's normalisation (crop and flip commute
    with a per-channel affine map, so this equals augmenting the normalised batch)."""
    view = to_unit(images, device)
    if how != "none":
        view = augment(view, pad=4 if how == "crop-flip" else 0, generator=generator)
    return view


class _Feed:
    """This process's share of each training batch, as augmented [0, 1] views with labels.

    One process: the whole batch. Under torchrun (DDP), rank r of W gets 1/W of every batch that
    one process would train on, so that W ranks take the steps of one: a streamed folder's
    sampler strides the same order (its per-sample augmentation is seeded), and an in-memory set
    is read whole on every rank (cheap), augmented with the same draws, and sliced.
    """

    def __init__(self, train_set, recipe: Recipe, device, dist):
        self.streamed = bool(getattr(train_set, "augmented", False))  # its loader augments (timm's transform)
        self.how = "none" if self.streamed else recipe.augment
        self.device, self.dist = device, dist
        self.per_rank = recipe.batch_size // dist.world_size
        if dist.enabled and recipe.batch_size % dist.world_size:
            raise ValueError(f"--batch-size {recipe.batch_size} does not split over {dist.world_size} ranks: "
                             f"give a multiple of {dist.world_size}")  # fmt: skip
        if dist.enabled and self.streamed:
            self.loader = train_set.train_loader(self.per_rank, seed=recipe.seed, drop_last=True,
                                                 workers=recipe.workers, rank=dist.rank, world_size=dist.world_size)  # fmt: skip
        else:
            self.loader = train_set.train_loader(recipe.batch_size, seed=recipe.seed, drop_last=True,
                                                 workers=recipe.workers)  # fmt: skip
        self.generator = torch.Generator().manual_seed(recipe.seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            view = _view(images, self.how, self.device, self.generator)
            if self.dist.enabled and not self.streamed:
                part = slice(self.dist.rank * self.per_rank, (self.dist.rank + 1) * self.per_rank)
                view, labels = view[part], labels[part]
            yield view, labels.to(self.device)


def _global_mean(loss: torch.Tensor, dist) -> float:
    """The step's loss over every rank's share (what one process would have seen)."""
    value = loss.detach().float().clone()
    if dist.enabled:
        import torch.distributed

        torch.distributed.all_reduce(value)
        value /= dist.world_size
    return float(value)


def _place(model: nn.Module, device):
    """The device (this rank's GPU under torchrun) and torchrun's context; ``model`` moved there
    (channels_last on CUDA)."""
    from lana.dist import DistContext

    device = resolve_device(device)
    dist = DistContext.from_env(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return device, dist


def _fitting(recipe: Recipe, images: int, desc: str) -> Recipe:
    """``recipe`` with a batch no larger than the data set (a small one: one batch of everything,
    not zero steps)."""
    if images >= recipe.batch_size:
        return recipe
    log.warning("%s: %d training images, fewer than a batch of %d: batches of %d", desc, images, recipe.batch_size,
                images)  # fmt: skip
    return replace(recipe, batch_size=max(1, images))


def fit(
    model: nn.Module,
    train_set: ImageDataset,
    recipe: Recipe,
    device="cpu",
    eval_set: ImageDataset | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    desc: str = "train",
    on_epoch: Callable[[dict], None] | None = None,
) -> FitResult:
    """Train ``model`` in place by ``recipe``; under torchrun, data-parallel (DDP: gloo on CPU,
    NCCL on GPU), each rank a share of every batch, so N ranks take the steps one would.

    Args:
        loss_fn: ``loss_fn(logits, labels, view)``; cross-entropy with label smoothing by default.
            ``view`` is the augmented batch as floats in [0, 1], *before* ``model``'s
            normalisation: a KD loss normalises it for its teacher (:func:`teacher_logits`), so a
            teacher whose mean/std differ from the student's sees its own input.
        eval_set: evaluated (top-1) after every epoch when given.
        on_epoch: called with each epoch's history entry.
    """
    device, dist = _place(model, device)
    torch.manual_seed(recipe.seed)
    channels_last = device.type == "cuda"
    recipe = _fitting(recipe, len(train_set), desc)
    feed = _Feed(train_set, recipe, device, dist)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist.enabled else model  # fmt: skip
    steps_per_epoch = len(feed)
    total = max(1, math.ceil(recipe.epochs * steps_per_epoch))
    if recipe.max_steps is not None:
        total = min(total, recipe.max_steps)
    optimizer = _make_optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total, max(1, int(recipe.warmup_frac * total)))
    )
    if loss_fn is None:
        loss_fn = lambda logits, labels, _x: F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)

    norm = model_norm(model)
    log.info("%s: %d steps (%.2f epochs of %d), %s lr=%g, batch %d%s, on %s", desc, total, total / steps_per_epoch,
             steps_per_epoch, recipe.optimizer, recipe.lr, recipe.batch_size,
             f" ({dist.world_size} ranks)" if dist.enabled else "", device)  # fmt: skip
    history, losses, step, start = [], [], 0, time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0, disable=not dist.is_main)
    epoch = 0
    while step < total:
        net.train()
        running, seen = 0.0, 0
        for view, labels in feed:
            x = normalize(view, channels_last=channels_last, **norm)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(net(x), labels, view)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(_global_mean(loss, dist))
            running, seen = running + losses[-1], seen + 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / seen:.3f}", lr=f"{schedule.get_last_lr()[0]:.3g}")
            if step >= total:
                break
        epoch += 1
        entry = {"epoch": epoch, "loss": running / max(1, seen), "seconds": time.perf_counter() - start}
        if eval_set is not None:
            entry["top1"] = evaluate(model, eval_set, device=device)
            log.info("%s epoch %d: loss %.4f, test top-1 %.2f%% (%.0f s)", desc, epoch, entry["loss"], entry["top1"],
                     entry["seconds"])  # fmt: skip
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
    bar.close()
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return FitResult(step, time.perf_counter() - start, tuple(history), tuple(losses))


def teacher_logits(teacher: nn.Module, view: torch.Tensor, img_size: int | None = None) -> torch.Tensor:
    """``teacher``'s logits on a [0, 1] batch ``view``, normalised by the teacher's own mean/std
    and resized to ``img_size`` (the size the teacher is run at) when that differs."""
    if img_size is not None and tuple(view.shape[-2:]) != (img_size, img_size):
        view = F.interpolate(view, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return teacher(normalize(view, **model_norm(teacher)))


def recipe_dict(recipe: Recipe) -> dict:
    return asdict(recipe)
