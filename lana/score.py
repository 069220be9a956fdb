"""Stage 3 of LANA: score each candidate by what swapping only its layer costs the teacher.

For every (layer, candidate) the teacher with only that layer swapped is evaluated on the
held-out ``score`` split, against the teacher's own outputs: the change in top-1 (points), the
change in cross-entropy, and the KL divergence from the teacher's predictions. The part of the
network before the layer is shared by all candidates: the layer is replaced by a module that runs
K candidates on the same input and stacks their outputs along the batch, so the prefix runs once
and the rest of the network runs on a K-times larger batch (batch elements are independent in
eval mode).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from lana.data import ImageDataset, to_model_input
from lana.layers import Layer, get_layer, replace_layer
from lana.train import model_norm

__all__ = ["SCORE_KINDS", "Scorer", "LogitScorer", "score_layer", "score_candidates"]

log = logging.getLogger(__name__)

SCORE_KINDS = ("top1_drop", "ce_delta", "kl")


class Scorer:
    """Turns the swapped network's logits into scores; one method, like Torch-Pruning's Importance."""

    kinds: tuple[str, ...] = SCORE_KINDS

    def __call__(self, logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


class LogitScorer(Scorer):
    """Top-1 drop (points), cross-entropy increase, and KL(teacher || swapped), over a split."""

    def __call__(self, logits, teacher_logits, labels):
        top1 = (logits.argmax(1) == labels).float().mean() * 100
        teacher_top1 = (teacher_logits.argmax(1) == labels).float().mean() * 100
        ce = F.cross_entropy(logits, labels)
        teacher_ce = F.cross_entropy(teacher_logits, labels)
        kl = F.kl_div(
            F.log_softmax(logits, 1), F.log_softmax(teacher_logits, 1), log_target=True, reduction="batchmean"
        )
        return {"top1_drop": float(teacher_top1 - top1), "ce_delta": float(ce - teacher_ce), "kl": float(kl)}


class _Fanout(nn.Module):
    """Runs several candidates on one input and stacks their outputs along the batch."""

    def __init__(self, candidates: Sequence[nn.Module]):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x):
        return torch.cat([c(x) for c in self.candidates], 0)


@torch.no_grad()
def score_layer(
    teacher: nn.Module,
    layer: Layer,
    candidates: Sequence[nn.Module],
    dataset: ImageDataset,
    teacher_logits: torch.Tensor,
    device="cpu",
    batch_size: int = 256,
    max_fanout_batch: int = 2048,
    scorer: Scorer | None = None,
) -> list[dict[str, float]]:
    """Score each candidate of one layer (the teacher is restored afterwards).

    Args:
        teacher_logits: the teacher's logits on ``dataset`` (CPU), computed once by the caller.
        max_fanout_batch: bound on K x batch so memory stays bounded.
    """
    scorer = scorer or LogitScorer()
    device = torch.device(device)
    norm = model_norm(teacher)
    original = get_layer(teacher, layer.name)
    per_group = max(1, max_fanout_batch // batch_size)
    logits = [[] for _ in candidates]
    try:
        for g0 in range(0, len(candidates), per_group):
            group = [c.to(device).eval() for c in candidates[g0 : g0 + per_group]]
            replace_layer(teacher, layer.name, _Fanout(group))
            for images, _labels in dataset.batches(batch_size):
                x = to_model_input(images, device, **norm)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    out = teacher(x).float().cpu()
                for i, part in enumerate(out.split(images.shape[0])):
                    logits[g0 + i].append(part)
    finally:
        replace_layer(teacher, layer.name, original)
    labels = dataset.labels[: teacher_logits.shape[0]]
    return [scorer(torch.cat(parts), teacher_logits, labels) for parts in logits]


def score_candidates(
    teacher: nn.Module,
    layers: Sequence[Layer],
    specs: Sequence[Sequence[str]],
    load: Callable[[int, str], nn.Module],
    dataset: ImageDataset,
    work_dir: str | os.PathLike,
    device="cpu",
    batch_size: int = 256,
    layer_ids: Sequence[int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Score every candidate of every layer; resumable (one JSON file per finished layer).

    Args:
        load: ``load(layer_index, spec) -> nn.Module`` with the distilled weights.
        layer_ids: only these layers (distributed builds split layers across ranks).

    Returns:
        Per layer, ``{kind: array over the layer's specs}``; ``teacher`` scores exactly 0.
    """
    from lana.train import predict_logits

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    teacher = teacher.to(device).eval()
    teacher_logits = predict_logits(teacher, dataset, batch_size, device)
    results = []
    todo = range(len(layers)) if layer_ids is None else layer_ids
    bar = tqdm(total=sum(len(specs[i]) for i in todo), desc="score", unit="cand", dynamic_ncols=True, mininterval=1.0)
    for li in todo:
        path = work / f"score_{li}.json"
        if path.exists():
            results.append({k: np.asarray(v) for k, v in json.loads(path.read_text()).items()})
            bar.update(len(specs[li]))
            continue
        scored = [s for s in specs[li] if s != "teacher"]
        values = score_layer(
            teacher, layers[li], [load(li, s) for s in scored], dataset, teacher_logits, device, batch_size
        )
        by_spec = dict(zip(scored, values))
        zero = {k: 0.0 for k in SCORE_KINDS}
        row = {k: [by_spec.get(s, zero)[k] for s in specs[li]] for k in SCORE_KINDS}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, path)
        results.append({k: np.asarray(v) for k, v in row.items()})
        bar.update(len(specs[li]))
        best = min((s for s in scored), key=lambda s: by_spec[s]["kl"], default=None)
        if best:
            log.info(
                "%-16s best by KL: %s (kl %.4f, top-1 drop %.2f)",
                layers[li].name,
                best,
                by_spec[best]["kl"],
                by_spec[best]["top1_drop"],
            )
    bar.close()
    return results
