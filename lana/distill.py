"""Stage 2 of LANA: layer-wise feature distillation of every candidate of every layer at once.

Per batch the teacher runs once (eval, no grad) with hooks capturing each layer's input and
output; every candidate of every layer learns ``candidate(x_in) ≈ y_out`` by MSE normalised by
the variance of the teacher's output (so losses compare across layers: 1.0 is as bad as
predicting the mean). All candidates of a chunk share one backward and one fused AdamW step:
their parameters are disjoint, so this equals separate optimizers, at a fraction of the Python
overhead. When all candidates do not fit in memory they are trained in chunks of layers, and the
teacher runs once per batch per chunk, stopping after the chunk's last layer.

Work is checkpointed atomically into a work directory, so a killed build resumes where it was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lana.data import ImageDataset, augment, to_model_input
from lana.files import torch_save, write_json
from lana.layers import Layer, get_layer
from lana.train import model_norm, warmup_cosine

__all__ = [
    "DistillConfig",
    "ChunkResult",
    "capture_io",
    "plan_chunks",
    "distill",
    "untrained_specs",
    "candidate_seed",
    "chunk_plan",
]

log = logging.getLogger(__name__)

UNTRAINED = ("teacher", "id")


def untrained_specs(spec: str) -> bool:
    """``teacher``, ``id`` and int8 specs need no training: an int8 candidate is its distilled
    float parent, quantized after distillation (``lana.context.LibraryContext.load``)."""
    from lana.candidates import is_int8

    return spec in UNTRAINED or is_int8(spec)


@dataclass(frozen=True)
class DistillConfig:
    """How candidates are distilled."""

    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 3e-3  # AdamW; a higher rate than fine-tuning because each block is small
    weight_decay: float = 0.0
    warmup_frac: float = 0.02
    max_steps: int | None = None
    chunk_params: int = 40_000_000  # trainable candidate parameters per chunk (~0.6 GB with AdamW)
    checkpoint_every_s: float = 60.0
    augment: bool = True  # random crop and flip of the teacher's input
    eval_images: int = 2000  # held-out images for each candidate's distillation loss
    seed: int = 0
    # training images whose teacher activations give the least-squares start of slim candidates
    # (0: none); 256 images give >= 20,000 pixels on maps down to 9x9, the probe of issue 14's size
    ls_images: int = 256
    # a start for fresh candidates whose last unit is a linear conv + BN (ir, dw, basic, bottleneck,
    # ...): that conv (with a 1x1 projection shortcut, jointly) fitted to the teacher block's output,
    # kept only where it beats the random start on held-out images (bench/fresh_start.py measures it)
    ls_fresh: bool = True


@dataclass(frozen=True)
class ChunkResult:
    layers: tuple[int, ...]
    steps: int
    seconds: float
    losses: dict  # "layer_index/spec" -> held-out normalised MSE
    # "layer_index/spec" -> {"before", "after"}: the least-squares start's fit (slim candidates,
    # and fresh ones with DistillConfig.ls_fresh)
    ls_start: dict = field(default_factory=dict)


def candidate_seed(seed: int, layer_name: str, spec: str) -> int:
    """A seed per candidate, independent of chunking and rank (so builds are reproducible)."""
    return (seed * 1_000_003 + zlib.crc32(f"{layer_name}/{spec}".encode())) % (2**31)


class _Stop(Exception):
    """Raised by a hook to end the teacher's forward after the last layer a chunk needs."""


@torch.no_grad()
def capture_io(
    teacher: nn.Module, names: Sequence[str], x: torch.Tensor, stop_early: bool = True
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Run the teacher once and return ``{layer name: (input, output)}`` for ``names``.

    With ``stop_early`` the forward stops after the last of ``names`` has run.
    """
    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    wanted = set(names)

    def hook(name):
        def fn(_module, args, output):
            found[name] = (args[0].detach(), output.detach())
            if stop_early and len(found) == len(wanted):
                raise _Stop

        return fn

    handles = [get_layer(teacher, n).register_forward_hook(hook(n)) for n in names]
    try:
        teacher(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = wanted - set(found)
    if missing:
        raise RuntimeError(f"layers {sorted(missing)} did not run in the teacher's forward")
    return found


def plan_chunks(param_counts: Sequence[int], chunk_params: int) -> list[list[int]]:
    """Group consecutive layers so that each group's trainable parameters stay under a bound."""
    chunks, current, total = [], [], 0
    for index, count in enumerate(param_counts):
        if current and total + count > chunk_params:
            chunks.append(current)
            current, total = [], 0
        current.append(index)
        total += count
    if current:
        chunks.append(current)
    return chunks


def _batch_indices(n: int, batch_size: int, epoch: int, seed: int) -> torch.Tensor:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 9973 + epoch))
    usable = (n // batch_size) * batch_size
    return order[:usable].view(-1, batch_size)


class _Chunk:
    """The trainable candidates of a group of layers, with one optimizer."""

    def __init__(self, layer_ids, layers, specs, build: Callable[[int, str], nn.Module], config: DistillConfig, device):
        self.layer_ids = list(layer_ids)
        self.updating = False  # inside optimizer.step(): the weights are half-stepped
        self.modules: dict[str, nn.Module] = {}
        for li in self.layer_ids:
            for spec in specs[li]:
                if untrained_specs(spec):
                    continue
                torch.manual_seed(candidate_seed(config.seed, layers[li].name, spec))
                # requires_grad: a teacher-derived candidate inherits the teacher's flags
                self.modules[f"{li}/{spec}"] = build(li, spec).to(device).train().requires_grad_(True)
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = (
            torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True) if params else None
        )

    def state(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
        }

    def load(self, state: dict) -> None:
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])


def _normalised_mse(pred: torch.Tensor, target: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred.float() - target.float()) ** 2) / variance


@torch.no_grad()
def _held_out_losses(
    chunk: _Chunk, teacher, layers, eval_set: ImageDataset, device, batch_size: int, norm: dict
) -> dict:
    """Normalised MSE of each candidate over the held-out images (eval mode)."""
    names = [layers[li].name for li in chunk.layer_ids]
    sq_err = {k: 0.0 for k in chunk.modules}
    sums = {li: [0.0, 0.0, 0] for li in chunk.layer_ids}  # sum y, sum y^2, count per layer
    for m in chunk.modules.values():
        m.eval()
    for images, _labels in eval_set.batches(batch_size):
        x = to_model_input(images, device, **norm)
        io = capture_io(teacher, names, x)
        for li in chunk.layer_ids:
            x_in, y = io[layers[li].name]
            s = sums[li]
            s[0] += float(y.double().sum())
            s[1] += float((y.double() ** 2).sum())
            s[2] += y.numel()
        for key, module in chunk.modules.items():
            li = int(key.split("/")[0])
            x_in, y = io[layers[li].name]
            sq_err[key] += float(((module(x_in).float() - y.float()) ** 2).double().sum())
    for m in chunk.modules.values():
        m.train()
    out = {}
    for key, err in sq_err.items():
        s = sums[int(key.split("/")[0])]
        variance = max(s[1] / s[2] - (s[0] / s[2]) ** 2, 1e-12)
        out[key] = err / s[2] / variance
    return out


def distill(
    teacher: nn.Module,
    layers: Sequence[Layer],
    specs: Sequence[Sequence[str]],
    build: Callable[[int, str], nn.Module],
    train_set: ImageDataset,
    eval_set: ImageDataset,
    work_dir: str | os.PathLike,
    config: DistillConfig = DistillConfig(),
    device: str | torch.device = "cpu",
    chunk_ids: Sequence[int] | None = None,
    min_chunks: int = 1,
) -> list[ChunkResult]:
    """Distil every trainable candidate; resumable through ``work_dir``.

    Args:
        build: ``build(layer_index, spec) -> nn.Module``, a freshly initialised candidate.
        work_dir: checkpoints go to ``chunk_K.ckpt.pt`` (running) and finished chunks to
            ``chunk_K.weights.pt`` + ``chunk_K.json``; finished chunks are skipped on resume.
        chunk_ids: only these chunks (distributed builds split the chunks across ranks).
        min_chunks: split into at least this many chunks (one per rank), layers permitting.

    Returns:
        One :class:`ChunkResult` per chunk (loaded from disk for chunks done earlier).
    """
    device = torch.device(device)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher = teacher.to(device).eval()
    norm = model_norm(teacher)
    channels_last = device.type == "cuda"
    chunks = chunk_plan(layers, specs, config.chunk_params, min_chunks)
    if len(train_set) < config.batch_size:  # a small data set: one batch of everything, as fit() does
        log.warning("distillation: %d training images, fewer than a batch of %d: batches of %d", len(train_set),
                    config.batch_size, len(train_set))  # fmt: skip
        config = replace(config, batch_size=max(1, len(train_set)))
    batches_per_epoch = len(train_set) // config.batch_size
    if batches_per_epoch == 0:
        raise ValueError("the training split is empty: nothing to distil the candidates on")
    total = max(1, math.ceil(config.epochs * batches_per_epoch))
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    eval_subset = eval_set.subset(min(config.eval_images, len(eval_set)))
    run = _Run(teacher, layers, specs, build, train_set, eval_subset, work, config, device, norm, channels_last, total,
               batches_per_epoch)  # fmt: skip
    results = []
    for k, chunk_layers in enumerate(chunks):
        if chunk_ids is not None and k not in chunk_ids:
            continue
        done_file = work / f"chunk_{k}.json"
        if done_file.exists():
            results.append(ChunkResult(**{**json.loads(done_file.read_text()), "layers": tuple(chunk_layers)}))
            continue
        results.append(_distill_chunk(run, k, len(chunks), chunk_layers))
    return results


def chunk_plan(layers, specs, chunk_params: int, min_chunks: int = 1) -> list[list[int]]:
    """The chunks of layers ``distill`` trains together (the same on every rank)."""
    trainable = [sum(layer_param_estimate(li, layers, specs)) for li in range(len(layers))]
    chunks = plan_chunks(trainable, chunk_params)
    while len(chunks) < min(min_chunks, len(layers)):  # halve the largest chunk until every rank has one
        big = max(range(len(chunks)), key=lambda i: len(chunks[i]))
        half = len(chunks[big]) // 2
        chunks[big : big + 1] = [chunks[big][:half], chunks[big][half:]]
    return chunks


def layer_param_estimate(li, layers, specs) -> list[int]:
    """Trainable parameters of each candidate of layer ``li`` (analytic, without building)."""
    from lana.candidates import estimate_cost

    def params(spec: str) -> int:
        if untrained_specs(spec):
            return 0
        if spec.startswith("slim"):  # cut from the teacher block, which it never outgrows (a bound)
            return int(layers[li].params)
        return int(estimate_cost(spec, layers[li]).params)

    return [params(s) for s in specs[li]]


@dataclass(frozen=True)
class _Run:
    """What every chunk of one distillation shares."""

    teacher: nn.Module
    layers: Sequence[Layer]
    specs: Sequence[Sequence[str]]
    build: Callable[[int, str], nn.Module]
    train_set: ImageDataset
    eval_set: ImageDataset
    work: Path
    config: DistillConfig
    device: torch.device
    norm: dict
    channels_last: bool
    total: int  # optimisation steps of every chunk
    batches_per_epoch: int


def _distill_chunk(run: _Run, k: int, n_chunks: int, chunk_layers) -> ChunkResult:
    """Train one chunk's candidates (resuming its checkpoint), then store their weights and losses."""
    chunk = _Chunk(chunk_layers, run.layers, run.specs, run.build, run.config, run.device)
    ckpt = run.work / f"chunk_{k}.ckpt.pt"
    step, elapsed = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, map_location=run.device, weights_only=True)
        chunk.load(state["chunk"])
        step, elapsed = int(state["step"]), float(state["seconds"])
        log.info("chunk %d/%d: resuming at step %d of %d", k + 1, n_chunks, step, run.total)
    names = [run.layers[li].name for li in chunk_layers]
    ls_start = _least_squares_starts(run, chunk) if step == 0 else {}  # a resumed chunk has its weights
    desc = f"distil {k + 1}/{n_chunks} ({names[0]}..{names[-1]}, {len(chunk.modules)} cands)"
    step, start = _train_chunk(run, chunk, names, step, elapsed, ckpt, desc)
    seconds = time.perf_counter() - start
    losses = _held_out_losses(chunk, run.teacher, run.layers, run.eval_set, run.device, run.config.batch_size, run.norm)
    weights = {
        key: {p: t.detach().cpu().contiguous() for p, t in m.state_dict().items()} for key, m in chunk.modules.items()
    }
    torch_save(weights, run.work / f"chunk_{k}.weights.pt")
    result = ChunkResult(tuple(chunk_layers), step, seconds, losses, ls_start)
    write_json(run.work / f"chunk_{k}.json", {k2: v for k2, v in asdict(result).items() if k2 != "layers"})
    ckpt.unlink(missing_ok=True)
    for li in chunk_layers:
        layer_losses = {s: losses[f"{li}/{s}"] for s in run.specs[li] if f"{li}/{s}" in losses}
        if layer_losses:
            best, worst = min(layer_losses, key=layer_losses.get), max(layer_losses, key=layer_losses.get)
            log.info("%-16s best %s %.4f, worst %s %.4f", run.layers[li].name, best, layer_losses[best], worst,
                     layer_losses[worst])  # fmt: skip
    return result


def _least_squares_starts(run: _Run, chunk: _Chunk) -> dict[str, dict]:
    """Refit the last linear unit of every slim candidate of the chunk to the teacher's, by ridge
    least squares on the teacher's activations at the layer for the first ``ls_images`` training
    images (:func:`lana.candidates.lsq.least_squares_start`), before any SGD step; with
    ``ls_fresh``, fit fresh candidates' last linear unit to the block's output the same way
    (:func:`lana.candidates.lsq.least_squares_fresh`)."""
    import copy

    from lana.candidates.lsq import least_squares_fresh, least_squares_start

    def slim(key: str) -> bool:
        return key.split("/", 1)[1].startswith("slim")

    def fresh(key: str) -> bool:
        return run.config.ls_fresh and not slim(key)  # chunk.modules holds trained candidates only

    keys = [key for key in chunk.modules if slim(key) or fresh(key)]
    if not keys or run.config.ls_images <= 0:
        return {}
    names = sorted({run.layers[int(key.split("/")[0])].name for key in keys})
    images = run.train_set.head(run.config.ls_images)
    inputs = {name: [] for name in names}
    starts = range(0, len(images), run.config.batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="capture (least-squares starts)", unit="batch", leave=False, mininterval=1.0):
            x = to_model_input(images[start : start + run.config.batch_size], run.device, **run.norm)
            for name, (x_in, _y) in capture_io(run.teacher, names, x).items():
                inputs[name].append(x_in.float().cpu())
    out = {}
    for key in tqdm(keys, desc="least-squares starts", unit="cand", dynamic_ncols=True, mininterval=1.0):
        li = int(key.split("/")[0])
        name, module = run.layers[li].name, chunk.modules[key]
        teacher_block = copy.deepcopy(get_layer(run.teacher, name)).cpu()  # the fit runs in float64 on the CPU
        fit_start = least_squares_start if slim(key) else least_squares_fresh
        try:
            fit = fit_start(module.cpu(), teacher_block, torch.cat(inputs[name]), seed=run.config.seed)
        except ValueError as error:  # a block kind whose last unit the fit does not cover yet
            log.debug("%s %s: no least-squares start (%s)", name, key, error)
            continue
        finally:
            module.to(run.device)
        out[key] = {"before": round(fit.nmse_before, 5), "after": round(fit.nmse_after, 5)}
    for what, chosen in (("slim", [k for k in out if slim(k)]), ("fresh", [k for k in out if not slim(k)])):
        if chosen:
            before, after = [np.median([out[k][v] for k in chosen]) for v in ("before", "after")]
            log.info("least-squares start of %d %s candidates: median nMSE %.3f -> %.3f", len(chosen), what, before,
                     after)  # fmt: skip
    return out


def _batches(run: _Run, first: int):
    """The uint8 training batches of steps ``first`` .. total: each depends on its step alone
    (resumable). A streamed folder decodes and augments them in its loader's workers, ahead of
    the step that needs them (timm's train transform, seeded per sample)."""
    steps, orders = [], {}
    for step in range(first, run.total):
        epoch, offset = divmod(step, run.batches_per_epoch)
        if epoch not in orders:
            orders[epoch] = _batch_indices(len(run.train_set), run.config.batch_size, epoch, run.config.seed)
        steps.append((epoch, orders[epoch][offset]))
    return iter(run.train_set.batches_at(steps, run.config.seed))


def _step(run: _Run, chunk: _Chunk, names, step: int, warmup: int, images: torch.Tensor) -> float:
    """One optimisation step of every candidate of the chunk on ``images`` (:func:`_batches`);
    returns the mean loss."""
    config, device = run.config, run.device
    x = to_model_input(images, device, channels_last=run.channels_last, **run.norm)
    if config.augment and not getattr(run.train_set, "augmented", False):
        torch.manual_seed(config.seed * 31 + step)  # resumable: augmentation depends on the step only
        x = augment(x)
    for group in chunk.optimizer.param_groups:
        group["lr"] = config.lr * warmup_cosine(step, run.total, warmup)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        io = capture_io(run.teacher, names, x)
        variances = {n: io[n][1].float().var().clamp_min(1e-8) for n in names}
        losses = []
        for key, module in chunk.modules.items():
            name = run.layers[int(key.split("/")[0])].name
            x_in, y = io[name]
            losses.append(_normalised_mse(module(x_in), y, variances[name]))
    loss = torch.stack(losses).sum()
    chunk.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    chunk.updating = True  # an interrupt inside the update leaves the weights half-stepped
    chunk.optimizer.step()
    chunk.updating = False
    return float(loss.detach()) / len(losses)


def _train_chunk(run: _Run, chunk: _Chunk, names, step: int, elapsed: float, ckpt: Path, desc: str):
    """The optimisation steps from ``step`` to ``run.total``, checkpointing on a timer and on
    Ctrl-C (so that an interrupt in the first minute loses nothing either); returns the last
    step and the (resume-adjusted) start time."""
    warmup = max(1, int(run.config.warmup_frac * run.total))
    bar = tqdm(total=run.total, initial=step, desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0)
    start, last_save = time.perf_counter() - elapsed, time.perf_counter()
    running = None

    def save(at: int) -> None:
        torch_save({"chunk": chunk.state(), "step": at, "seconds": time.perf_counter() - start}, ckpt)

    batches = _batches(run, step)
    try:
        while step < run.total and chunk.optimizer is not None:
            mean = _step(run, chunk, names, step, warmup, next(batches))
            step += 1
            running = mean if running is None else 0.95 * running + 0.05 * mean
            bar.update(1)
            bar.set_postfix(mean_loss=f"{running:.3f}")
            if time.perf_counter() - last_save > run.config.checkpoint_every_s and step < run.total:
                save(step)
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        if not chunk.updating and step > 0:  # the weights are those after `step` steps
            save(step)
            log.warning(
                "interrupted: step %d of %d saved in %s; rerun the same command to resume", step, run.total, ckpt
            )
        raise
    finally:
        bar.close()
    return step, start


def load_chunk_weights(work_dir: str | os.PathLike, k: int) -> dict[str, dict[str, torch.Tensor]]:
    """Finished chunk ``k``'s weights: ``"layer_index/spec" -> state dict``."""
    return torch.load(Path(work_dir) / f"chunk_{k}.weights.pt", map_location="cpu", weights_only=True)
