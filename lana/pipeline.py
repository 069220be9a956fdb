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
from lana.distill import DistillConfig, chunk_plan, distill, load_chunk_weights, untrained_specs
from lana.library import LayerRecord, write_library, write_latency_table
from lana.teacher import file_sha256, load_teacher

__all__ = ["BuildConfig", "BuildResult", "build", "add_latency_table", "parse_table_name", "default_tables", "LibraryContext"]

log = logging.getLogger(__name__)

# fields that change what the library holds: a work directory from other values is not resumed
_IDENTITY_FIELDS = ("model", "checkpoint_sha256", "pretrained", "dataset", "img_size", "space", "epochs",
                    "batch_size", "lr", "max_steps", "seed", "limit", "score_images", "max_macs_ratio")


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


def parse_table_name(name: str) -> dict:
    """``cpu-b64`` / ``cpu-ort-b1`` / ``cuda-b64`` → device, backend and batch size."""
    parts = name.split("-")
    try:
        batch = int(parts[-1].removeprefix("b"))
        if not parts[-1].startswith("b"):
            raise ValueError
    except ValueError:
        raise ValueError(f"table name {name!r} must end in -b<batch size>, e.g. cpu-b64, cpu-ort-b1, cuda-b64") from None
    device = parts[0]
    if device not in ("cpu", "cuda"):
        raise ValueError(f"table name {name!r} must start with cpu or cuda")
    backend = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch"}.get(parts[1] if len(parts) == 3 else "torch")
    if backend is None:
        raise ValueError(f"table name {name!r}: backend must be torch or ort (onnxruntime)")
    return {"device": device, "backend": backend, "batch_size": batch}


class LibraryContext:
    """A teacher with its layers and candidate specs; builds and loads candidates."""

    def __init__(self, teacher, img_size: int, space: str, max_macs_ratio=2.0):
        from lana.candidates import estimate_cost, space_for
        from lana.layers import find_layers

        self.teacher = teacher.eval()
        self.input_shape = (3, img_size, img_size)
        self.layers = find_layers(teacher, self.input_shape)
        self.specs = [space_for(layer, space, max_macs_ratio=max_macs_ratio) for layer in self.layers]
        self.costs = [[estimate_cost(s, layer) for s in specs] for layer, specs in zip(self.layers, self.specs)]
        self.weights: dict[str, dict[str, torch.Tensor]] = {}

    def build(self, li: int, spec: str):
        from lana.candidates import build_candidate
        from lana.layers import get_layer

        return build_candidate(spec, self.layers[li], teacher_block=get_layer(self.teacher, self.layers[li].name))

    def load_inference(self, li: int, spec: str):
        """The candidate as it ships: distilled weights, branches fused, BN folded (for timing)."""
        from lana.candidates import inference_form

        return inference_form(self.load(li, spec))

    def inference_teacher(self):
        """The teacher as it ships (BN folded): what latency tables time."""
        from lana.candidates import inference_form

        return inference_form(self.teacher)

    def load(self, li: int, spec: str):
        """The candidate with its distilled weights (eval mode)."""
        module = self.build(li, spec)
        key = f"{li}/{spec}"
        if key in self.weights:
            module.load_state_dict(self.weights[key])
        elif not untrained_specs(spec):
            raise KeyError(f"no distilled weights for {spec} at layer {self.layers[li].name}")
        return module.eval()


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
        changed = {k: (previous.get(k), v) for k, v in identity.items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{work} holds an interrupted build with other settings ({detail}); "
                             "rerun with the same settings to resume, or pass --restart to start over")
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
        table = measure_table(ctx.inference_teacher(), ctx.layers, ctx.specs, ctx.load_inference, meter, name,
                              input_shape=ctx.input_shape, rounds=config.latency_rounds, seed=config.seed)
        data = {"name": name, "device": table.device, "backend": table.backend, "batch_size": table.batch_size,
                "threads": table.threads, "fingerprint": table.fingerprint, "fixed_ms": table.fixed_ms,
                "fixed_spread_ms": table.fixed_spread_ms, "teacher_ms": table.teacher_ms,
                "latency_ms": [row.tolist() for row in table.latency_ms], "spread_ms": [row.tolist() for row in table.spread_ms]}
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
    from lana.data import load_dataset
    from lana.score import score_candidates
    from lana.train import resolve_device

    from lana.dist import DistContext

    out = Path(out)
    device = resolve_device(config.device)
    dist = DistContext.from_env(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    sha = file_sha256(config.checkpoint) if config.checkpoint else None
    config = replace(config, checkpoint_sha256=sha, device=device.type,
                     tables=tuple(config.tables) if config.tables else default_tables(device.type))
    for name in config.tables:
        parse_table_name(name)  # fail before hours of work on a bad table name
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
    teacher = load_teacher(config.model, train_set.num_classes, checkpoint=config.checkpoint, pretrained=config.pretrained)
    ctx = LibraryContext(teacher, config.img_size, config.space, config.max_macs_ratio)
    n_cands = sum(len(s) for s in ctx.specs)
    log.info("%s: %d layers, %d candidates (space %s, 10^%.1f combinations)", config.model, len(ctx.layers), n_cands,
             config.space, sum(np.log10(len(s)) for s in ctx.specs))
    stages["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dcfg = DistillConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, max_steps=config.max_steps,
                         checkpoint_every_s=config.checkpoint_every_s, seed=config.seed)
    run = lambda ids: distill(ctx.teacher, ctx.layers, ctx.specs, ctx.build, train_set, score_set, work, dcfg, device,
                              chunk_ids=ids, min_chunks=dist.world_size)
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
            score_candidates(ctx.teacher, ctx.layers, ctx.specs, ctx.load, score_set, work, device,
                             layer_ids=dist.mine(list(range(len(ctx.layers)))))
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
        dl = np.array([0.0 if s == "teacher" else losses.get(f"{li}/{s}", np.nan) for s in specs])
        if "id" in specs:  # the identity's loss is defined as well: it is just not trained
            dl[specs.index("id")] = np.nan
        records.append(LayerRecord(
            name=layer.name, kind=layer.kind, in_shape=layer.in_shape, out_shape=layer.out_shape, stride=layer.stride,
            params=layer.params, macs=layer.macs, specs=list(specs),
            cand_params=np.array([c.params for c in ctx.costs[li]]), cand_macs=np.array([c.macs for c in ctx.costs[li]]),
            distill_loss=dl,
            scores=scores[li] if scores else {},
            latency={t["name"]: np.asarray(t["latency_ms"][li]) for t in tables},
            latency_spread={t["name"]: np.asarray(t["spread_ms"][li]) for t in tables},
        ))
        for s in specs:
            if f"{li}/{s}" in ctx.weights:
                weights[(li, s)] = {k: v.numpy() for k, v in ctx.weights[f"{li}/{s}"].items()}
    teacher_meta = {"model": config.model, "num_classes": train_set.num_classes, "img_size": config.img_size, "in_chans": 3,
                    "checkpoint": config.checkpoint, "checkpoint_sha256": sha, "pretrained": config.pretrained,
                    "classes": list(train_set.classes)}
    meta = {"lana_version": lana.__version__, "teacher": teacher_meta, "config": {**asdict(config), "stages_s": stages},
            "stages": {"distill": True, "score": scores is not None}, "default_score": config.default_score,
            "dataset": config.dataset, "space": config.space}
    complete = scores is not None and bool(tables)
    table_attrs = [{k: v for k, v in t.items() if k not in ("latency_ms", "spread_ms")} for t in tables]
    write_library(out, meta, records, weights, {k: v.cpu().numpy() for k, v in ctx.teacher.state_dict().items()},
                  table_attrs, complete=complete)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    log.info("library %s written (%s): %d layers, %d candidates; peak memory %.0f MB", out,
             "complete" if complete else "incomplete", len(records), n_cands, peak)
    return BuildResult(str(out), len(records), n_cands, stages, peak)


def add_latency_table(path: str | os.PathLike, name: str, threads: int | None = None, rounds: int = 5, seed: int = 0) -> dict:
    """Time an existing library's candidates on another target and store the table in it.

    Args:
        name: the table's name, which also says the target: ``cpu-b1``, ``cpu-ort-b64``, ``cuda-b64``.
    """
    from lana.latency import make_meter, measure_table

    ctx = context_from_library(path)
    spec = parse_table_name(name)
    meter = make_meter(spec["device"], spec["backend"], spec["batch_size"], threads=threads)
    table = measure_table(ctx.inference_teacher(), ctx.layers, ctx.specs, ctx.load_inference, meter, name,
                          input_shape=ctx.input_shape, rounds=rounds, seed=seed)
    attrs = {"name": name, "device": table.device, "backend": table.backend, "batch_size": table.batch_size,
             "threads": table.threads, "fingerprint": table.fingerprint, "fixed_ms": table.fixed_ms,
             "fixed_spread_ms": table.fixed_spread_ms, "teacher_ms": table.teacher_ms}
    write_latency_table(path, attrs, table.latency_ms, table.spread_ms)
    return {**attrs, "table": table, "context": ctx}


def load_latency_table(path: str | os.PathLike, name: str):
    """A stored latency table as a :class:`lana.latency.LatencyTable` (to check it, say)."""
    import h5py

    from lana.latency import LatencyTable
    from lana.library import LibraryError, _attr, layer_records

    with h5py.File(path, "r") as f:
        if name not in f.get("latency_tables", {}):
            raise LibraryError(f"{path} has no latency table {name!r}; it has {', '.join(f.get('latency_tables', {})) or 'none'}")
        a = {k: _attr(v) for k, v in f["latency_tables"][name].attrs.items()}
        records = layer_records(f)
    return LatencyTable(name=name, device=a.get("device", ""), backend=a.get("backend", ""), batch_size=int(a["batch_size"]),
                        threads=int(a.get("threads", 0) or 0), fingerprint=a.get("fingerprint", {}), fixed_ms=float(a["fixed_ms"]),
                        fixed_spread_ms=float(a.get("fixed_spread_ms", 0.0)), teacher_ms=float(a["teacher_ms"]),
                        latency_ms=[r.latency[name] for r in records], spread_ms=[r.latency_spread[name] for r in records],
                        specs=[list(r.specs) for r in records])


def context_from_library(path: str | os.PathLike) -> LibraryContext:
    """A :class:`LibraryContext` whose candidates load their weights from the library."""
    import h5py

    from lana.library import layer_records, load_library_teacher, _attr

    teacher = load_library_teacher(path)
    with h5py.File(path, "r") as f:
        meta = _attr(f.attrs["teacher"])
        records = layer_records(f)
        weights = {}
        for index, key in enumerate(sorted(f["layers"])):
            for spec, group in f["layers"][key].get("weights", {}).items():
                weights[f"{index}/{spec}"] = {k: torch.from_numpy(np.asarray(v[()])) for k, v in group.items()}
    ctx = LibraryContext.__new__(LibraryContext)
    from lana.candidates import estimate_cost
    from lana.layers import Layer

    ctx.teacher = teacher
    ctx.input_shape = (3, meta["img_size"], meta["img_size"])
    ctx.layers = [Layer(r.name, r.kind, r.in_shape, r.out_shape, r.stride, r.params, r.macs) for r in records]
    ctx.specs = [r.specs for r in records]
    ctx.costs = [[estimate_cost(s, layer) for s in r.specs] for layer, r in zip(ctx.layers, records)]
    ctx.weights = weights
    return ctx
