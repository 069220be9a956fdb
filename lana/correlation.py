"""Which score predicts a student's accuracy best: a measured choice, not an assumption.

Random students are assembled from a library (no fine-tuning), their real top-1 is measured, and
the Spearman rank correlation between that top-1 and the summed score of each kind is reported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = ["CorrelationReport", "score_correlation", "spearman"]

log = logging.getLogger(__name__)


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties share their mean rank); NaN for fewer than 3 pairs or a
    constant input, where a rank correlation means nothing. Pairs with a NaN are dropped first."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return float("nan")

    def ranks(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # average the ranks of ties
            tie = x == value
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


@dataclass(frozen=True)
class CorrelationReport:
    students: int
    top1: tuple[float, ...]
    summed: dict  # kind -> tuple of summed scores
    spearman: dict  # kind -> correlation of -summed score with top-1

    def best(self) -> str:
        return max(self.spearman, key=lambda k: self.spearman[k])

    def to_text(self) -> str:
        lines = [f"{'score':<10} {'Spearman(top-1, -sum)':>22}"]
        lines += [f"{k:<10} {v:>22.3f}" for k, v in sorted(self.spearman.items(), key=lambda kv: -kv[1])]
        lines.append(
            f"{self.students} random students, top-1 {min(self.top1):.2f}..{max(self.top1):.2f}%; best: {self.best()}"
        )
        return "\n".join(lines)


def score_correlation(
    library,
    count: int = 20,
    dataset_split: str = "score",
    seed: int = 0,
    device="cpu",
    max_replaced: float = 0.6,
    limit: int | None = None,
) -> CorrelationReport:
    """Assemble ``count`` random students, measure top-1, correlate with each summed score.

    Each student replaces each layer with probability ``max_replaced`` by a random non-teacher
    candidate (so students range from near-teacher to heavily changed). Plans a calibrated score
    kind was fitted on are drawn again, so every kind is judged on plans it never saw.
    """
    from lana.context import context_from_library
    from lana.data import split_of
    from lana.library import Library
    from lana.plan import Plan
    from lana.student import student_from_context
    from lana.train import evaluate

    lib = Library(library)
    ctx = context_from_library(lib)
    built = lib.config
    scores = [record.scores for record in lib.layers()]
    data = split_of(built, dataset_split, limit=limit if limit is not None else built.get("score_images"))
    rng = np.random.default_rng(seed)
    kinds = sorted(scores[0])
    # a calibrated kind is judged on plans its fit never saw (issue 15): its fitted samples are skipped
    fitted = {tuple(s["plan"]) for c in lib.calibrations.values() for s in c.get("samples", []) if not s["held_out"]}
    top1, summed = [], {k: [] for k in kinds}
    for i in range(count):
        for _ in range(100):
            choices = []
            for specs in ctx.specs:
                index = 0
                if rng.random() < max_replaced and len(specs) > 1:
                    index = int(rng.integers(1, len(specs)))
                choices.append(index)
            if tuple(choices) not in fitted:
                break
        plan = Plan(
            ctx.teacher.default_cfg.get("architecture", "model"),
            tuple((layer.name, ctx.specs[li][c]) for li, (layer, c) in enumerate(zip(ctx.layers, choices))),
            0.0,
            0.0,
        )
        student = student_from_context(ctx, plan)
        top1.append(evaluate(student, data, device=device))
        for k in kinds:
            summed[k].append(float(sum(scores[li][k][c] for li, c in enumerate(choices))))
        log.info("random student %d/%d: top-1 %.2f%%", i + 1, count, top1[-1])
    rho = {k: spearman(top1, -np.asarray(v)) for k, v in summed.items()}
    return CorrelationReport(count, tuple(top1), {k: tuple(v) for k, v in summed.items()}, rho)
