"""The build: steps 1-3 of LANA (layers and candidates, distillation, scores, latency) into one
library file, resumable at every stage.

Everything in progress lives in ``LIB.h5.work/`` (atomic checkpoint files); the library itself is
written once, atomically, when every stage is done, and marked ``complete``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import lana
from lana.context import LibraryContext, context_from_library  # noqa: F401 (re-exported for callers of lana.pipeline)
from lana.distill import DistillConfig, chunk_plan, distill, load_chunk_weights
from lana.library import LayerRecord, write_latency_table, write_library
from lana.teacher import file_sha256, load_teacher

__all__ = [
    "BuildConfig",
    "BuildResult",
    "build",
    "add_latency_table",
    "parse_table_name",
    "default_tables",
    "LibraryContext",
    "check_int8_target",
]

log = logging.getLogger(__name__)

# fields that change what the library holds: a work directory from other values is not resumed
_IDENTITY_FIELDS = (
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
    score_images: int | None = 2000  # held-out images for scores (None: the whole score split)
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


@dataclass(frozen=True)
class BuildResult:
    path: str
    layers: int
    candidates: int
    stages_s: dict
    peak_memory_mb: float


def default_tables(device: str) -> tuple[str, ...]:
    """Batch 1 and 64 on the build's device."""
    return ("cuda-b1", "cuda-b64") if device == "cuda" else ("cpu-b1", "cpu-b64")


def check_int8_target(device: str, tables) -> None:
    """Int8 candidates run on PyTorch's x86 quantized kernels (fbgemm / oneDNN) only: refuse
    another device or backend before any work is done.

    Raises:
        ValueError: For a device other than the CPU, or a table not timed by torch on the CPU.
    """
    wrong = [name for name in tables if parse_table_name(name)["device"] != "cpu"
             or parse_table_name(name)["backend"] != "torch"]  # fmt: skip
    if device != "cpu" or wrong:
        what = f"device {device!r}" if device != "cpu" else f"table(s) {', '.join(wrong)}"
        raise ValueError(
            f"--int8 needs --device cpu and cpu-b* tables (got {what}): int8 candidates run on "
            "PyTorch's x86 quantized kernels only, which neither CUDA nor ONNX Runtime tables time"
        )


def parse_table_name(name: str) -> dict:
    """``cpu-b64`` / ``cpu-ort-b1`` / ``cuda-b64`` → device, backend and batch size."""
    parts = name.split("-")
    try:
        batch = int(parts[-1].removeprefix("b"))
        if not parts[-1].startswith("b"):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"table name {name!r} must end in -b<batch size>, e.g. cpu-b64, cpu-ort-b1, cuda-b64"
        ) from None
    device = parts[0]
    if device not in ("cpu", "cuda"):
        raise ValueError(f"table name {name!r} must start with cpu or cuda")
    backend = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch"}.get(
        parts[1] if len(parts) == 3 else "torch"
    )
    if backend is None:
        raise ValueError(f"table name {name!r}: backend must be torch or ort (onnxruntime)")
    return {"device": device, "backend": backend, "batch_size": batch}


def _peak_memory_mb(device: torch.device) -> float:
    import resource

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _open_work_dir(work: Path, config: BuildConfig, restart: bool) -> None:
    identity = {k: getattr(config, k) for k in _IDENTITY_FIELDS}
    stamp = work / "config.json"
    if restart and work.exists():
        shutil.rmtree(work)
    if stamp.exists():
        previous = json.loads(stamp.read_text())
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
    tmp = stamp.with_name("config.json.tmp")
    tmp.write_text(json.dumps(identity, indent=1))
    os.replace(tmp, stamp)


def _measure_tables(ctx: LibraryContext, names, config: BuildConfig, work: Path) -> list:
    from lana.latency import make_meter, measure_table

    tables = []
    for name in names:
        path = work / f"latency_{name}.json"
        if path.exists():
            tables.append(json.loads(path.read_text()))
            continue
        spec = parse_table_name(name)
        meter = make_meter(spec["device"], spec["backend"], spec["batch_size"], threads=config.threads)
        # timed in shipped form (BN folded, rep branches fused): the tables measure what ships
        table = measure_table(
            ctx.inference_teacher(),
            ctx.layers,
            ctx.specs,
            ctx.load_inference,
            meter,
            name,
            input_shape=ctx.input_shape,
            rounds=config.latency_rounds,
            seed=config.seed,
        )
        data = {
            "name": name,
            "device": table.device,
            "backend": table.backend,
            "batch_size": table.batch_size,
            "threads": table.threads,
            "fingerprint": table.fingerprint,
            "fixed_ms": table.fixed_ms,
            "fixed_spread_ms": table.fixed_spread_ms,
            "teacher_ms": table.teacher_ms,
            "latency_ms": [row.tolist() for row in table.latency_ms],
            "spread_ms": [row.tolist() for row in table.spread_ms],
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        log.info("latency %s: teacher %.3f ms, fixed part %.3f ms", name, table.teacher_ms, table.fixed_ms)
        tables.append(data)
    return tables


def build(config: BuildConfig, out: str | os.PathLike, restart: bool = False, keep_work: bool = False) -> BuildResult:
    """Build a library: distil, score and time every candidate of every layer of the teacher.

    Resumable: rerunning the same command after an interruption continues from the last
    checkpoint in ``OUT.work/``. The library is written (atomically) only when all is done.
    """
    from lana.calibration import CalibrationSet
    from lana.candidates import float_parent
    from lana.data import load_dataset
    from lana.dist import DistContext
    from lana.score import score_candidates
    from lana.train import resolve_device

    out = Path(out)
    device = resolve_device(config.device)
    dist = DistContext.from_env(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    sha = file_sha256(config.checkpoint) if config.checkpoint else None
    config = replace(
        config,
        checkpoint_sha256=sha,
        device=device.type,
        tables=tuple(config.tables) if config.tables else default_tables(device.type),
    )
    for name in config.tables:
        parse_table_name(name)  # fail before hours of work on a bad table name
    if config.int8:
        check_int8_target(device.type, config.tables)
    work = out.with_name(out.name + ".work")
    if dist.is_main:
        _open_work_dir(work, config, restart)
    dist.barrier()
    if not dist.is_main:
        _open_work_dir(work, config, restart=False)
    stages = {}
    t0 = time.perf_counter()
    train_set = load_dataset(config.dataset, "train", config.img_size, seed=config.seed, limit=config.limit)
    score_set = load_dataset(config.dataset, "score", config.img_size, seed=config.seed, limit=config.score_images)
    torch.manual_seed(config.seed)  # a teacher without weights (smoke runs) is the same on every rank
    teacher = load_teacher(
        config.model, train_set.num_classes, checkpoint=config.checkpoint, pretrained=config.pretrained
    )
    ctx = LibraryContext.for_space(
        teacher,
        config.img_size,
        config.space,
        config.max_macs_ratio,
        int8=config.int8,
        calibration=CalibrationSet.of(asdict(config)),
    )
    n_cands = sum(len(s) for s in ctx.specs)
    log.info(
        "%s: %d layers, %d candidates (space %s, 10^%.1f combinations)",
        config.model,
        len(ctx.layers),
        n_cands,
        config.space,
        sum(np.log10(len(s)) for s in ctx.specs),
    )
    stages["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dcfg = DistillConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        max_steps=config.max_steps,
        checkpoint_every_s=config.checkpoint_every_s,
        seed=config.seed,
    )
    run = lambda ids: distill(
        ctx.teacher,
        ctx.layers,
        ctx.specs,
        ctx.build,
        train_set,
        score_set,
        work,
        dcfg,
        device,
        chunk_ids=ids,
        min_chunks=dist.world_size,
    )
    if dist.enabled:  # each rank distils its chunks; then every rank reads all of them from disk
        run(dist.mine(list(range(len(chunk_plan(ctx.layers, ctx.specs, dcfg.chunk_params, dist.world_size))))))
        dist.barrier()
    chunks = run(None)
    losses = {}
    for k, chunk in enumerate(chunks):
        ctx.weights.update(load_chunk_weights(work, k))
        losses.update(chunk.losses)
    stages["distill"] = time.perf_counter() - t0

    scores = None
    if not config.skip_score:
        t0 = time.perf_counter()
        if dist.enabled:
            score_candidates(
                ctx.teacher,
                ctx.layers,
                ctx.specs,
                ctx.load,
                score_set,
                work,
                device,
                layer_ids=dist.mine(list(range(len(ctx.layers)))),
            )
            dist.barrier()
        scores = score_candidates(ctx.teacher, ctx.layers, ctx.specs, ctx.load, score_set, work, device)
        stages["score"] = time.perf_counter() - t0
    if not dist.is_main:  # rank 0 times latency and writes the library
        return BuildResult(str(out), len(ctx.layers), n_cands, stages, _peak_memory_mb(device))
    tables = []
    if not config.skip_latency:
        t0 = time.perf_counter()
        if all(parse_table_name(n)["device"] == "cpu" for n in config.tables):
            ctx.teacher.cpu()
        tables = _measure_tables(ctx, config.tables, config, work)
        stages["latency"] = time.perf_counter() - t0
    peak = _peak_memory_mb(device)
    records, weights = [], {}
    for li, (layer, specs) in enumerate(zip(ctx.layers, ctx.specs)):
        # an int8 candidate is not distilled itself: it carries its float parent's loss
        parents = [float_parent(s) for s in specs]
        dl = np.array([0.0 if s == "teacher" else losses.get(f"{li}/{s}", np.nan) for s in parents])
        if "id" in specs:  # the identity's loss is defined as well: it is just not trained
            dl[specs.index("id")] = np.nan
        records.append(
            LayerRecord(
                name=layer.name,
                kind=layer.kind,
                in_shape=layer.in_shape,
                out_shape=layer.out_shape,
                stride=layer.stride,
                params=layer.params,
                macs=layer.macs,
                specs=list(specs),
                cand_params=np.array([c.params for c in ctx.costs[li]]),
                cand_macs=np.array([c.macs for c in ctx.costs[li]]),
                distill_loss=dl,
                scores=scores[li] if scores else {},
                latency={t["name"]: np.asarray(t["latency_ms"][li]) for t in tables},
                latency_spread={t["name"]: np.asarray(t["spread_ms"][li]) for t in tables},
            )
        )
        for s in specs:
            if f"{li}/{s}" in ctx.weights:
                weights[(li, s)] = {k: v.numpy() for k, v in ctx.weights[f"{li}/{s}"].items()}
    teacher_meta = {
        "model": config.model,
        "num_classes": train_set.num_classes,
        "img_size": config.img_size,
        "in_chans": 3,
        "checkpoint": config.checkpoint,
        "checkpoint_sha256": sha,
        "pretrained": config.pretrained,
        "classes": list(train_set.classes),
    }
    meta = {
        "lana_version": lana.__version__,
        "teacher": teacher_meta,
        "config": {**asdict(config), "stages_s": stages},
        "stages": {"distill": True, "score": scores is not None},
        "default_score": config.default_score,
        "dataset": config.dataset,
        "space": config.space,
    }
    complete = scores is not None and bool(tables)
    table_attrs = [{k: v for k, v in t.items() if k not in ("latency_ms", "spread_ms")} for t in tables]
    write_library(
        out,
        meta,
        records,
        weights,
        {k: v.cpu().numpy() for k, v in ctx.teacher.state_dict().items()},
        table_attrs,
        complete=complete,
    )
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "library %s written (%s): %d layers, %d candidates; peak memory %.0f MB",
        out,
        "complete" if complete else "incomplete",
        len(records),
        n_cands,
        peak,
    )
    return BuildResult(str(out), len(records), n_cands, stages, peak)


def add_latency_table(
    path: str | os.PathLike, name: str, threads: int | None = None, rounds: int = 5, seed: int = 0
) -> dict:
    """Time an existing library's candidates on another target and store the table in it.

    Args:
        name: the table's name, which also says the target: ``cpu-b1``, ``cpu-ort-b64``, ``cuda-b64``.
    """
    from lana.candidates import is_int8
    from lana.latency import make_meter, measure_table

    ctx = context_from_library(path)
    spec = parse_table_name(name)
    if any(is_int8(s) for specs in ctx.specs for s in specs):
        check_int8_target(spec["device"], [name])
    meter = make_meter(spec["device"], spec["backend"], spec["batch_size"], threads=threads)
    table = measure_table(
        ctx.inference_teacher(),
        ctx.layers,
        ctx.specs,
        ctx.load_inference,
        meter,
        name,
        input_shape=ctx.input_shape,
        rounds=rounds,
        seed=seed,
    )
    attrs = {
        "name": name,
        "device": table.device,
        "backend": table.backend,
        "batch_size": table.batch_size,
        "threads": table.threads,
        "fingerprint": table.fingerprint,
        "fixed_ms": table.fixed_ms,
        "fixed_spread_ms": table.fixed_spread_ms,
        "teacher_ms": table.teacher_ms,
    }
    write_latency_table(path, attrs, table.latency_ms, table.spread_ms)
    return {**attrs, "table": table, "context": ctx}


def load_latency_table(path: str | os.PathLike, name: str):
    """A stored latency table as a :class:`lana.latency.LatencyTable` (to check it, say)."""
    import h5py

    from lana.latency import LatencyTable
    from lana.library import LibraryError, attr_value, layer_records

    with h5py.File(path, "r") as f:
        if name not in f.get("latency_tables", {}):
            raise LibraryError(
                f"{path} has no latency table {name!r}; it has {', '.join(f.get('latency_tables', {})) or 'none'}"
            )
        a = {k: attr_value(v) for k, v in f["latency_tables"][name].attrs.items()}
        records = layer_records(f)
    return LatencyTable(
        name=name,
        device=a.get("device", ""),
        backend=a.get("backend", ""),
        batch_size=int(a["batch_size"]),
        threads=int(a.get("threads", 0) or 0),
        fingerprint=a.get("fingerprint", {}),
        fixed_ms=float(a["fixed_ms"]),
        fixed_spread_ms=float(a.get("fixed_spread_ms", 0.0)),
        teacher_ms=float(a["teacher_ms"]),
        latency_ms=[r.latency[name] for r in records],
        spread_ms=[r.latency_spread[name] for r in records],
        specs=[list(r.specs) for r in records],
    )
