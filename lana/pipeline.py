"""The build: steps 1-3 of LANA (layers and candidates, distillation, scores, latency) into one
library file, resumable at every stage.

Everything in progress lives in ``LIB.h5.work/`` (atomic checkpoint files); the library itself is
written once, atomically, when every stage is done, and marked ``complete``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import lana
from lana.context import LibraryContext, context_from_library
from lana.distill import DistillConfig, chunk_plan, distill, load_chunk_weights
from lana.files import file_sha256, read_json, write_json
from lana.library import LayerRecord, Library, LibraryError, write_latency_table, write_library
from lana.meters import meter_for_table
from lana.noise import MAX_RETIMES
from lana.table_names import canonical_table, check_int8_target, default_tables, parse_table_name
from lana.teacher import check_img_size, load_teacher

__all__ = ["BuildConfig", "BuildResult", "build", "add_latency_table"]

log = logging.getLogger(__name__)

# fields that change what the library holds: a work directory or a library built with other
# values of any of them is another build (not resumed, not reused)
IDENTITY_FIELDS = (
    "model",
    "checkpoint_sha256",
    "pretrained",
    "dataset",
    "img_size",
    "space",
    "epochs",
    "batch_size",
    "lr",
    "max_steps",
    "seed",
    "limit",
    "score_images",
    "score_split",
    "synsets",
    "max_macs_ratio",
    "int8",
)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that defines a library build (stored whole in the library)."""

    model: str = "resnet18"
    checkpoint: str | None = None
    pretrained: bool = False
    dataset: str = "fashion-mnist"
    img_size: int = 32
    space: str = "default"
    max_macs_ratio: float | None = 2.0
    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 3e-3
    max_steps: int | None = None
    device: str = "auto"
    seed: int = 0
    limit: int | None = None  # training images used (smoke runs)
    score_images: int | None = 2000  # images of the score split the scores use (None: all of it)
    # the score split held out of training (--score-split): a count, a fraction or a folder;
    # None: 5,000 for Fashion-MNIST, min(5000, 10%) of an image folder's training images
    score_split: int | float | str | None = None
    synsets: bool = False  # a folder of ImageNet synsets: labels are the pretrained head's outputs
    # a pretrained head that does not know the classes is fine-tuned first (lana.head), this long;
    # teacher_finetune False refuses instead, printing the `lana teacher` command
    teacher_epochs: float = 2.0
    teacher_finetune: bool = True
    tables: tuple[str, ...] | None = None  # latency tables to measure; None: default_tables(device)
    threads: int | None = None
    latency_rounds: int = 5
    skip_score: bool = False
    skip_latency: bool = False
    checkpoint_every_s: float = 60.0
    # Measured: over 20 random resnet18 students (H100 build, default space), Spearman's rho between
    # real top-1 and the summed score was 0.79 for top1_drop, 0.73 for kl, 0.72 for ce_delta.
    default_score: str = "top1_drop"
    # add an int8 twin of every candidate (``S_int8``, CPU only): calibrated on the teacher's
    # inputs at its layer, scored and timed as int8, so that the ILP mixes precisions per layer
    int8: bool = False
    checkpoint_sha256: str | None = field(default=None)

    def identity(self) -> dict:
        """The settings that make two builds the same build (see ``IDENTITY_FIELDS``); call it on
        a :meth:`resolved` config, which knows the checkpoint's digest."""
        return {k: getattr(self, k) for k in IDENTITY_FIELDS}

    def resolved(self, device: torch.device) -> BuildConfig:
        """The config as a build runs it: the device's type, the checkpoint's SHA-256, the tables
        (``default_tables`` of the device when none were given), every table name checked."""
        sha = file_sha256(self.checkpoint) if self.checkpoint else None
        tables = tuple(self.tables) if self.tables else default_tables(device.type)
        for name in tables:
            parse_table_name(name)  # fail before hours of work on a bad table name
        tables = tuple(dict.fromkeys(canonical_table(name) for name in tables))  # ort-b1 is cpu-ort-b1
        if self.int8:
            check_int8_target(device.type, tables)
        return replace(self, checkpoint_sha256=sha, device=device.type, tables=tables)


@dataclass(frozen=True)
class BuildResult:
    path: str
    layers: int
    candidates: int
    stages_s: dict
    peak_memory_mb: float
    reused: bool = False  # a complete library of the same settings was there: nothing was built


def _peak_memory_mb(device: torch.device) -> float:
    import resource

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def _timed(stages: dict, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    stages[name] = time.perf_counter() - start


def _open_work_dir(work: Path, config: BuildConfig, restart: bool) -> None:
    """Resume ``work`` when it holds a build of the same settings; refuse other settings."""
    identity = config.identity()
    stamp = work / "config.json"
    if restart and work.exists():
        shutil.rmtree(work)
    previous = read_json(stamp)
    if previous is not None:
        previous.setdefault("int8", False)  # work directories from before --int8 existed
        changed = {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{work} holds an interrupted build with other settings ({detail}); "
                "rerun with the same settings to resume, or pass --restart to start over"
            )
        log.info("resuming the build in %s", work)
        return
    work.mkdir(parents=True, exist_ok=True)
    write_json(stamp, identity)


@dataclass
class _Inputs:
    """What every stage of a build works on."""

    ctx: LibraryContext
    train_set: object
    score_set: object
    device: torch.device
    dist: object
    work: Path


def _setup(config: BuildConfig, out: Path, restart: bool) -> tuple[BuildConfig, _Inputs]:
    """Device, data, teacher and candidates; then the work directory (only once all of them
    loaded, so that a failed start leaves nothing behind)."""
    from lana.calibration import CalibrationSet
    from lana.data import split_of
    from lana.dist import DistContext, resolve_device

    device = resolve_device(config.device)
    dist = DistContext.from_env(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    config = config.resolved(device)
    train_set = split_of(asdict(config), "train", limit=config.limit)
    score_set = split_of(asdict(config), "score", limit=config.score_images)
    torch.manual_seed(config.seed)  # a teacher without weights (smoke runs) is the same on every rank
    teacher = load_teacher(
        config.model, train_set.num_classes, checkpoint=config.checkpoint, pretrained=config.pretrained
    )
    check_img_size(teacher, config.img_size, config.model)
    if not config.checkpoint and not config.pretrained:
        log.warning(
            "%s has neither a checkpoint nor pretrained weights: distilling a randomly initialised teacher "
            "(give --checkpoint FILE or --pretrained for a real one)",
            config.model,
        )
    ctx = LibraryContext.for_space(
        teacher,
        config.img_size,
        config.space,
        config.max_macs_ratio,
        int8=config.int8,
        calibration=CalibrationSet.of(asdict(config)),
    )
    log.info(
        "%s: %d layers, %d candidates (space %s, 10^%.1f combinations)",
        config.model,
        len(ctx.layers),
        sum(len(s) for s in ctx.specs),
        config.space,
        sum(np.log10(len(s)) for s in ctx.specs),
    )
    work = out.with_name(out.name + ".work")
    if dist.is_main:
        _open_work_dir(work, config, restart)
    dist.barrier()
    if not dist.is_main:
        _open_work_dir(work, config, restart=False)
    return config, _Inputs(ctx, train_set, score_set, device, dist, work)


def _distill_stage(config: BuildConfig, run: _Inputs) -> dict[str, float]:
    """Distil every candidate (each rank its chunks under torchrun); the held-out losses."""
    ctx, dist = run.ctx, run.dist
    dcfg = DistillConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        max_steps=config.max_steps,
        checkpoint_every_s=config.checkpoint_every_s,
        seed=config.seed,
    )

    def chunks(ids):
        return distill(ctx.teacher, ctx.layers, ctx.specs, ctx.build, run.train_set, run.score_set, run.work, dcfg,
                       run.device, chunk_ids=ids, min_chunks=dist.world_size)  # fmt: skip

    if dist.enabled:  # each rank distils its chunks; then every rank reads all of them from disk
        chunks(dist.mine(list(range(len(chunk_plan(ctx.layers, ctx.specs, dcfg.chunk_params, dist.world_size))))))
        dist.barrier()
    losses = {}
    for k, chunk in enumerate(chunks(None)):
        ctx.weights.update(load_chunk_weights(run.work, k))
        losses.update(chunk.losses)
    return losses


def _score_stage(run: _Inputs) -> list[dict]:
    """Score every candidate (each rank its layers under torchrun, then rank 0 reads them all)."""
    from lana.score import score_candidates

    ctx = run.ctx
    score = lambda **kw: score_candidates(ctx.teacher, ctx.layers, ctx.specs, ctx.load, run.score_set, run.work,
                                          run.device, **kw)  # fmt: skip
    if run.dist.enabled:
        score(layer_ids=run.dist.mine(list(range(len(ctx.layers)))))
        run.dist.barrier()
    return score()


def _latency_stage(config: BuildConfig, run: _Inputs) -> list[dict]:
    """Time every candidate on every table, resumable per table (``latency_<table>.json``)."""
    from lana.latency import measure_table

    ctx = run.ctx
    if all(parse_table_name(n)["device"] == "cpu" for n in config.tables):
        ctx.teacher.cpu()
    tables = []
    for name in config.tables:
        path = run.work / f"latency_{name}.json"
        data = read_json(path)
        if data is None:
            meter = meter_for_table(name, threads=config.threads)
            # timed in shipped form (BN folded, rep branches fused): the tables measure what ships
            table = measure_table(ctx.inference_teacher(), ctx.layers, ctx.specs, ctx.load_inference, meter, name,
                                  input_shape=ctx.input_shape, rounds=config.latency_rounds, seed=config.seed,
                                  max_retimes=MAX_RETIMES)  # fmt: skip
            data = {**table.attrs(), "latency_ms": [r.tolist() for r in table.latency_ms],
                    "spread_ms": [r.tolist() for r in table.spread_ms]}  # fmt: skip
            write_json(path, data, indent=None)
            log.info("latency %s: teacher %.3f ms, fixed part %.3f ms", name, table.teacher_ms, table.fixed_ms)
        tables.append(data)
    return tables


def _layer_records(ctx: LibraryContext, losses: dict, scores: list | None, tables: list[dict]) -> list[LayerRecord]:
    from lana.candidates import float_parent

    records = []
    for li, (layer, specs) in enumerate(zip(ctx.layers, ctx.specs)):
        # an int8 candidate is not distilled itself: it carries its float parent's loss
        parents = [float_parent(s) for s in specs]
        loss = np.array([0.0 if s == "teacher" else losses.get(f"{li}/{s}", np.nan) for s in parents])
        if "id" in specs:  # the identity's loss is defined as well: it is just not trained
            loss[specs.index("id")] = np.nan
        records.append(
            LayerRecord(
                name=layer.name, kind=layer.kind, in_shape=layer.in_shape, out_shape=layer.out_shape,
                stride=layer.stride, params=layer.params, macs=layer.macs, specs=list(specs),
                cand_params=np.array([c.params for c in ctx.costs[li]]),
                cand_macs=np.array([c.macs for c in ctx.costs[li]]),
                distill_loss=loss, scores=scores[li] if scores else {},
                latency={t["name"]: np.asarray(t["latency_ms"][li]) for t in tables},
                latency_spread={t["name"]: np.asarray(t["spread_ms"][li]) for t in tables},
            )
        )  # fmt: skip
    return records


def _splits(config: BuildConfig, run: _Inputs) -> dict:
    """How the data set was split (issue 27 item 2): recorded in the library."""
    from lana.data import FMNIST_SCORE_IMAGES
    from lana.folder import split_record

    used = {"train_used": len(run.train_set), "score_used": len(run.score_set)}
    source = getattr(run.train_set, "source", None)
    if source is not None:
        return {**split_record(source), **used}
    return {"source": config.dataset, "score": config.score_split or FMNIST_SCORE_IMAGES, "seed": config.seed, **used}


def _write(out: Path, config: BuildConfig, run: _Inputs, records, scores, tables, stages) -> bool:
    """Write the library; returns whether it is complete."""
    ctx = run.ctx
    weights = {
        (li, s): {k: v.numpy() for k, v in ctx.weights[f"{li}/{s}"].items()}
        for li, specs in enumerate(ctx.specs)
        for s in specs
        if f"{li}/{s}" in ctx.weights
    }
    teacher_meta = {
        "model": config.model, "num_classes": run.train_set.num_classes, "img_size": config.img_size,
        "in_chans": 3, "checkpoint": config.checkpoint, "checkpoint_sha256": config.checkpoint_sha256,
        "pretrained": config.pretrained, "classes": list(run.train_set.classes),
    }  # fmt: skip
    meta = {
        "lana_version": lana.__version__, "teacher": teacher_meta, "config": {**asdict(config), "stages_s": stages},
        "stages": {"distill": True, "score": scores is not None}, "default_score": config.default_score,
        "dataset": config.dataset, "space": config.space, "splits": _splits(config, run),
    }  # fmt: skip
    complete = scores is not None and bool(tables)
    table_attrs = [{k: v for k, v in t.items() if k not in ("latency_ms", "spread_ms")} for t in tables]
    teacher_state = {k: v.cpu().numpy() for k, v in ctx.teacher.state_dict().items()}
    write_library(out, meta, records, weights, teacher_state, table_attrs, complete=complete)
    return complete


def _existing(out: Path, config: BuildConfig, restart: bool) -> tuple[BuildResult | None, dict]:
    """What an existing file at ``out`` means for a build: ``(result, later)``.

    A complete library of this very build is kept as it is (``result`` set; tables the build
    asks for and the file lacks are timed into it). One of other settings, or a file that is not
    a readable library, is replaced only with ``restart``. ``later``: the tables of the file that
    the build does not make (added with ``lana latency``), kept to be carried into the new file.
    """
    if not out.exists():
        return None, {}
    try:
        library = Library(out)
    except LibraryError as error:
        if restart:
            return None, {}
        raise ValueError(f"{error}; pass --restart to build over it, or choose another output") from None
    from lana.dist import resolve_device

    wanted = config.resolved(resolve_device(config.device))
    changed = library.same_build(wanted.identity())
    names = [name for name in library.tables if name not in wanted.tables]
    records = library.layers() if names else []  # read now: the new file will replace this one
    later = {
        name: (
            library.tables[name],
            [(r.name, list(r.specs)) for r in records],
            [r.latency[name] for r in records],
            [r.latency_spread[name] for r in records],
        )
        for name in names
    }
    if library.complete and not changed and not restart:
        missing = [name for name in wanted.tables if name not in library.tables]
        for name in missing:
            log.info("%s is complete; timing the table it lacks: %s", out, name)
            add_latency_table(out, name, threads=config.threads, rounds=config.latency_rounds, seed=config.seed)
        layers = library.layers()
        log.info(
            "%s is already a complete library of these settings: nothing to do (--restart rebuilds it)%s",
            out,
            f"; added {', '.join(missing)}" if missing else "",
        )
        stages = {k: float(v) for k, v in library.config.get("stages_s", {}).items()}
        return BuildResult(str(out), len(layers), sum(len(r.specs) for r in layers), stages, 0.0, reused=True), {}
    if library.complete and changed and not restart:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"{out} is a complete library built with other settings ({detail}); pass --restart to rebuild it "
            "(the file is replaced when the new build is done), or choose another output"
        )
    return None, later


def _carry_tables(out: Path, later: dict) -> None:
    """Put the tables added to the old file with ``lana latency`` into the new one, where the
    layers and candidates are the same (a table times architectures, not weights)."""
    if not later:
        return
    shape = [(r.name, list(r.specs)) for r in Library(out).layers()]
    for name, (attrs, old_shape, latency, spread) in later.items():
        if old_shape != shape:
            log.warning(
                "table %s of the old %s is dropped: its candidates differ; time it again with `lana latency`", name, out
            )
            continue
        write_latency_table(out, {**attrs, "name": name}, latency, spread)
        log.info("kept table %s of the old %s", name, out)


def build(config: BuildConfig, out: str | os.PathLike, restart: bool = False, keep_work: bool = False) -> BuildResult:
    """Build a library: distil, score and time every candidate of every layer of the teacher.

    Resumable: rerunning the same command after an interruption continues from the last
    checkpoint in ``OUT.work/``. The library is written (atomically) only when all is done.
    Onto a complete library of the same settings it is a no-op (it only times tables the file
    lacks); onto one of other settings it refuses unless ``restart``. Either way the tables
    added later with ``lana latency`` are kept (where the candidates are the same).

    Raises:
        ValueError: ``out`` holds a library (or a work directory) of other settings, and no
            ``restart``; or bad settings.
    """
    from lana.head import fitted_teacher

    out = Path(out)
    stages: dict[str, float] = {}
    with _timed(stages, "teacher"):  # never plan on a random head (lana.head): a cached stage
        config = fitted_teacher(config, out.with_name(out.name + ".teacher"), refuse=not config.teacher_finetune)
    done, later = _existing(out, config, restart)
    if done is not None:
        return done
    with _timed(stages, "setup"):
        config, run = _setup(config, out, restart)
    n_cands = sum(len(s) for s in run.ctx.specs)
    with _timed(stages, "distill"):
        losses = _distill_stage(config, run)
    scores = None
    if not config.skip_score:
        with _timed(stages, "score"):
            scores = _score_stage(run)
    if not run.dist.is_main:  # rank 0 times latency and writes the library
        return BuildResult(str(out), len(run.ctx.layers), n_cands, stages, _peak_memory_mb(run.device))
    tables = []
    if not config.skip_latency:
        with _timed(stages, "latency"):
            tables = _latency_stage(config, run)
    peak = _peak_memory_mb(run.device)
    records = _layer_records(run.ctx, losses, scores, tables)
    complete = _write(out, config, run, records, scores, tables, stages)
    _carry_tables(out, later)
    if not keep_work:
        shutil.rmtree(run.work, ignore_errors=True)
    log.info("library %s written (%s): %d layers, %d candidates; peak memory %.0f MB", out,
             "complete" if complete else "incomplete", len(records), n_cands, peak)  # fmt: skip
    return BuildResult(str(out), len(records), n_cands, stages, peak)


def add_latency_table(
    path: str | os.PathLike, name: str, threads: int | None = None, rounds: int = 5, seed: int = 0
) -> dict:
    """Time an existing library's candidates on another target and store the table in it.

    Args:
        name: the table's name, which also says the target: ``cpu-b1``, ``cpu-ort-b64``, ``cuda-b64``.
    """
    from lana.candidates import is_int8
    from lana.latency import measure_table

    parse_table_name(name)  # a bad name fails before the library is loaded
    name = canonical_table(name)
    ctx = context_from_library(path)
    if any(is_int8(s) for specs in ctx.specs for s in specs):
        check_int8_target(parse_table_name(name)["device"], [name])
    meter = meter_for_table(name, threads=threads)
    table = measure_table(ctx.inference_teacher(), ctx.layers, ctx.specs, ctx.load_inference, meter, name,
                          input_shape=ctx.input_shape, rounds=rounds, seed=seed, max_retimes=MAX_RETIMES)  # fmt: skip
    attrs = table.attrs()
    write_latency_table(path, attrs, table.latency_ms, table.spread_ms)
    return {**attrs, "table": table, "context": ctx}
