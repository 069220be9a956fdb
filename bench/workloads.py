"""The benchmark's workloads (issue 8) and the cached stages every method shares: teacher, library.

A workload is one frozen :class:`Workload`: a teacher, its data, the latency tables, the budgets and
how long each method may train. The teacher and the library are cached under ``OUT/<workload>/``
and reused when their settings match, so a rerun only redoes the per-budget work.

* ``W1``: resnet18 trained from scratch on Fashion-MNIST at 32 px; CPU, batch 64 and 1.
* ``W2``: ImageNet-pretrained tf_efficientnet_lite0 (offline weights), fine-tuned on Fashion-MNIST
  at 64 px; CPU, batch 64 and 1.
* ``smoke(w)``: the same code path at tiny scale (a few hundred images, a few steps per stage).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from lana.files import read_json, write_json

__all__ = [
    "FULL",
    "WORKLOADS",
    "Workload",
    "WorkloadRun",
    "budget_factor",
    "sibling_budget",
    "budget_table",
    "build_config",
    "library_stages",
    "prepare_library",
    "prepare_teacher",
    "smoke",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    """Everything that defines one workload of the benchmark (kept whole with its results).

    Attributes:
        name: ``W1``, ``W2`` (``-smoke`` appended at tiny scale).
        model: the teacher's timm name.
        pretrained: start the teacher from ImageNet weights (fine-tune) instead of from scratch.
        teacher_epochs: epochs of the teacher's training (or fine-tuning).
        space: lana's candidate space preset.
        build_epochs: distillation epochs of the library build.
        tables: latency tables measured (library and final side-by-side measurement).
        budget_table: the table the budgets apply to.
        budgets: factors of the teacher's measured latency on ``budget_table``; ``0.33x@cpu-b1``
            sets one on another of the ``tables`` (issue 16 item 4: budgets on batch 1).
        finetune_epochs: KD fine-tuning of every student (lana, random, greedy, pruned).
        sibling: the smaller-sibling family, width-bisected to every ``x`` budget (``resnet18``/
            ``resnet10t``: the teacher at reduced width; ``lcnet``/``mobilenetv3_small``: timm's
            CPU-oriented nets at a width multiplier); None: a sibling only at ``=MODEL`` budgets, where
            it is that pretrained model (:func:`sibling_budget`).
        limit: training images of every stage (None: all 55,000; W2 on a CPU and smoke runs use fewer).
        max_steps: cap on the optimisation steps of every stage; for smoke runs.
        eval_limit: test images of the final top-1 (None: all 10,000).
        corr_images: test images of the pre-fine-tune top-1 behind the score-accuracy correlation.
        random_plans: random feasible plans drawn per budget (the best by predicted score is kept).
        match_tolerance: relative latency gap allowed between a baseline and lana's student.
        search_iters: bisection steps when matching a baseline's latency.
        search_blocks: paired blocks per latency measurement of the search, at first
            (:func:`lana.paired.time_pairs`; up to 3x as many while its interval is wider than 1%).
        rematch: a competitor that measures out of [0.95, 1.0] of its budget once trained is
            matched again with the factor training moved its latency by, and trained again.
        latency_rounds: interleaved rounds of the library tables and of the final measurement.
        threads: CPU threads for training and timing (None: torch's default / every core).
        calibrate: fit the calibrated score (``lana calibrate``, issue 15) on whole students of the
            library after its build; lana's plans, greedy and random then rank by it.
        seeds: fine-tuning seeds of lana, the best competitor and uniform slim at every budget
            (issue 25 item 5); the other methods get one.
        competitors: what a user would run instead (:mod:`bench.competitors`): ``prune``
            (Torch-Pruning, Taylor, global), ``fastnas`` (Model Optimizer), ``sibling``.
        longer: the budget of the longer setting (issue 25 item 4): there lana's plan and the best
            competitor are fine-tuned again on ``longer_factor`` x lana's fine-tuning images (rows
            ``lana_long`` and ``<competitor>_long``, seed 0), to show whether the gap survives
            more training; None: no longer setting.
    """

    name: str = "W1"
    model: str = "resnet18"
    pretrained: bool = False
    dataset: str = "fashion-mnist"
    img_size: int = 32
    teacher_epochs: float = 5.0
    teacher_lr: float | None = None  # None: train_teacher's default (0.1 scratch, 0.01 fine-tune)
    space: str = "default"
    build_epochs: float = 1.0
    score_images: int | None = 2000
    tables: tuple[str, ...] = ("cpu-b64", "cpu-b1")
    budget_table: str = "cpu-b64"
    budgets: tuple[str, ...] = ("0.5x", "0.35x")
    finetune_epochs: float = 1.0
    sibling: str | None = "resnet18"
    limit: int | None = None
    max_steps: int | None = None
    eval_limit: int | None = None
    corr_images: int = 2000
    random_plans: int = 20
    match_tolerance: float = 0.05
    search_iters: int = 8
    search_blocks: int = 20
    rematch: bool = True
    latency_rounds: int = 5
    threads: int | None = None
    device: str = "auto"
    seed: int = 0
    calibrate: bool = True
    seeds: int = 3
    competitors: tuple[str, ...] = ("prune", "fastnas", "sibling")
    longer: str | None = None
    longer_factor: float = 3.0

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.img_size, self.img_size)


WORKLOADS: dict[str, Workload] = {
    # Sized for a 2-core CPU (about an hour for W1): the compact space (12 candidates a layer, the
    # cheap end of every family) distilled for half an epoch, every student fine-tuned for half an
    # epoch. The teacher trains 4 epochs (91.4% top-1, 24 min). The sibling, from random weights,
    # trains on the teacher's recipe plus KD for the teacher's epochs plus lana's after-teacher ones.
    # `--scale full` runs the default space (~40 a layer) for an epoch: ~8 h here, minutes on a GPU.
    # Two budgets are set on batch 1 (issue 16): the baselines are matched on that table there.
    "W1": Workload(
        teacher_epochs=4.0,
        space="compact",
        build_epochs=0.5,
        finetune_epochs=0.5,
        budgets=("0.5x", "0.35x", "0.5x@cpu-b1", "0.33x@cpu-b1"),
        longer="0.5x",
    ),
    # The LANA paper's experiment (issue 25 item 2): ImageNet-pretrained EfficientNet-Lite2 (the
    # offline wheel), fine-tuned 2 epochs at lr 0.01 on Fashion-MNIST at 64 px; on a 2-core CPU every
    # stage sees 15,000 of the 55,000 training images (the test set stays whole). Budgets: the
    # measured latency of the pretrained Lite1 and Lite0, which are then the siblings (fine-tuned on
    # the teacher's recipe for the teacher's images plus lana's after-teacher images, KD from the
    # teacher), and 0.5x / 0.35x where the competitors are pruning and FastNAS.
    "W2": Workload(
        name="W2",
        model="tf_efficientnet_lite2",
        pretrained=True,
        img_size=64,
        teacher_epochs=2.0,
        space="compact",
        build_epochs=0.5,
        finetune_epochs=0.5,
        sibling=None,
        limit=15000,
        budgets=("=tf_efficientnet_lite1", "=tf_efficientnet_lite0", "0.5x", "0.35x"),
        # the longer setting where W1 has it: at a sibling budget it retrains the sibling too
        # (~12 min more on 2 cores), and W2's budgets run in parts of a session each (bench/merge.py)
        longer="0.5x",
    ),
}

# The settings the library was designed for (default space, 1 epoch of distillation and of
# fine-tuning, 5 for the sibling): `python3 -m bench --scale full`.
FULL = {"space": "default", "build_epochs": 1.0, "finetune_epochs": 1.0, "limit": None}


def smoke(workload: Workload) -> Workload:
    """The workload at tiny scale: every stage runs, in about a minute on 2 cores."""
    tiny_model = {"resnet18": "resnet10t"}.get(workload.model, workload.model)
    return replace(
        workload,
        name=f"{workload.name}-smoke",
        model=tiny_model,
        sibling=tiny_model if workload.sibling == workload.model else workload.sibling,
        seeds=2,  # the intervals need two
        img_size=32,
        teacher_epochs=1.0,
        space="tiny",
        build_epochs=1.0,
        score_images=64,
        limit=256,
        max_steps=2,
        eval_limit=128,
        corr_images=64,
        random_plans=20,
        search_iters=3,
        search_blocks=2,
        latency_rounds=1,
        threads=1,
        # batch 8, not 64: a 1-thread resnet10t takes ~140 ms a batch of 64 on a loaded 2-core CPU
        tables=("cpu-b8", "cpu-b1"),
        budget_table="cpu-b8",
        # resnet10t's 4 blocks in the tiny space bottom out near 0.37x (stem and head stay); one
        # budget on the batch-1 table when the workload has them
        budgets=("0.7x", "0.5x", *(("0.7x@cpu-b1",) if any("@" in b for b in workload.budgets) else ())),
        longer="0.7x" if workload.longer else None,
    )


def budget_table(workload, budget: str) -> str:
    """The table a budget label is set on: ``0.5x`` on the workload's ``budget_table``,
    ``0.33x@cpu-b1`` on ``cpu-b1`` (``workload``: a :class:`Workload` or its dict)."""
    if "@" in budget:
        return budget.split("@", 1)[1]
    return workload["budget_table"] if isinstance(workload, dict) else workload.budget_table


def budget_factor(budget: str) -> float:
    """``0.33x@cpu-b1`` -> 0.33 (a sibling's budget, ``=MODEL``, is measured: see
    :func:`sibling_budget`)."""
    if sibling_budget(budget):
        raise ValueError(f"budget {budget!r} is a model's measured latency, not a factor")
    return float(budget.split("@", 1)[0].rstrip("x"))


def sibling_budget(budget: str) -> str | None:
    """``=tf_efficientnet_lite0`` (optionally ``@table``) -> the model whose measured latency is
    the budget (issue 25 item 2: the smaller pretrained model of the teacher's family); else None."""
    label = budget.split("@", 1)[0]
    return label[1:] if label.startswith("=") else None


def prepare_teacher(workload: Workload, out: Path) -> dict:
    """Train (or fine-tune) the workload's teacher, or reuse the one cached in ``out/teacher``.

    Returns:
        ``teacher.json``'s content (path, top1, minutes, config, ...) plus ``cached``.
    """
    from lana.teacher import TeacherConfig, train_teacher

    wanted = {
        "model": workload.model,
        "dataset": workload.dataset,
        "img_size": workload.img_size,
        "epochs": workload.teacher_epochs,
        "pretrained": workload.pretrained,
        "lr": workload.teacher_lr,
        "max_steps": workload.max_steps,
        "limit": workload.limit,
        "seed": workload.seed,
    }
    from bench.provenance import code_digest, cpu_model

    sidecar = read_json(out / "teacher" / "teacher.json")
    made = read_json(out / "teacher" / "provenance.json") or {}
    if (
        sidecar
        and Path(sidecar["path"]).is_file()
        and all(sidecar["config"].get(k) == v for k, v in wanted.items())
        and made.get("code") == code_digest("teacher")
    ):
        log.info("%s: reusing teacher %s (top-1 %.2f%%)", workload.name, sidecar["path"], sidecar["top1"])
        return {**sidecar, "cached": True, "provenance": made}
    config = TeacherConfig(
        model=workload.model, dataset=workload.dataset, img_size=workload.img_size, epochs=workload.teacher_epochs,
        pretrained=workload.pretrained, lr=workload.teacher_lr, max_steps=workload.max_steps,
        device=workload.device, seed=workload.seed, limit=workload.limit,
    )  # fmt: skip
    result = train_teacher(config, out / "teacher")
    made = {"code": code_digest("teacher"), "cpu": cpu_model()}
    write_json(out / "teacher" / "provenance.json", made)
    return {**asdict(result), "cached": False, "provenance": made}


def build_config(workload: Workload, checkpoint: str):
    from lana.pipeline import BuildConfig

    # pretrained=False: the teacher's weights (ImageNet ones included) are in the checkpoint
    return BuildConfig(
        model=workload.model,
        checkpoint=checkpoint,
        dataset=workload.dataset,
        img_size=workload.img_size,
        space=workload.space,
        epochs=workload.build_epochs,
        max_steps=workload.max_steps,
        device=workload.device,
        seed=workload.seed,
        limit=workload.limit,
        score_images=workload.score_images,
        tables=workload.tables,
        threads=workload.threads,
        latency_rounds=workload.latency_rounds,
    )


def _library_is_current(path: Path, config) -> bool:
    """A complete library of this very build, timed on the same tables with as many rounds."""
    from lana.dist import resolve_device
    from lana.library import Library, LibraryError

    try:
        library = Library(path)
    except LibraryError as error:
        log.warning("%s: rebuilding", error)
        return False
    wanted = config.resolved(resolve_device(config.device))
    identity = {**wanted.identity(), "tables": list(wanted.tables), "latency_rounds": wanted.latency_rounds}
    return library.complete and not library.same_build(identity)


def prepare_library(workload: Workload, checkpoint: str, out: Path) -> dict:
    """Build lana's library for the teacher (resumable), or reuse ``out/library.h5`` when current.

    Returns:
        ``{"path", "cached", "stages_s"}``; ``stages_s`` are the build's own stage times, read
        back from the library when it is reused.
    """
    from bench.provenance import code_digest, cpu_model
    from lana.pipeline import build

    path = out / "library.h5"
    config = build_config(workload, checkpoint)
    made = read_json(out / "library.provenance.json") or {}
    current = made.get("code") == code_digest("library")
    if path.exists() and current and _library_is_current(path, config):
        log.info("%s: reusing library %s", workload.name, path)
        return {"path": str(path), "cached": True, "stages_s": library_stages(path),
                "calibration": _calibration(workload, path), "provenance": made}  # fmt: skip
    stale = (path.exists() or path.with_name(path.name + ".work").exists()) and not current
    if stale:  # an interrupted or complete build by other code: start it over
        log.warning("%s: the library's code changed (or is unrecorded): rebuilding it", workload.name)
        path.unlink(missing_ok=True)
    made = {"code": code_digest("library"), "cpu": cpu_model()}
    write_json(out / "library.provenance.json", made)  # before the build: an interrupted one resumes
    start = time.perf_counter()
    try:
        build(config, path, restart=stale)
    except ValueError as error:  # an interrupted build with other settings: start it over
        if "other settings" not in str(error):  # an interrupted build, or a complete library, of other settings
            raise
        log.warning("%s; restarting the build", error)
        build(config, path, restart=True)
    stages = library_stages(path)
    log.info("%s: library built in %.0f s (%s)", workload.name, time.perf_counter() - start, stages)
    calibration = _calibration(workload, path)
    return {"path": str(path), "cached": False, "stages_s": stages, "calibration": calibration, "provenance": made}


def _calibration(workload: Workload, path: Path) -> dict | None:
    """The library's calibration (made now when the workload wants one and the library has none):
    ``CalibrationResult``'s fields plus ``cached``; None when the workload does not calibrate."""
    from lana.calibrate import CALIBRATED, CalibrationConfig, calibrate
    from lana.library import Library

    if not workload.calibrate:
        return None
    done = Library(path).calibrations.get(CALIBRATED)
    if done:
        # the stored record holds the samples themselves under "samples"; the result counts them
        kept = {k: v for k, v in done.items() if k not in ("samples", "fit", "config")}
        return kept | {"samples": len(done.get("samples", [])), "cached": True}
    result = calibrate(path, CalibrationConfig(device=workload.device, seed=workload.seed))
    return {**asdict(result), "cached": False}


def library_stages(path: str | Path) -> dict[str, float]:
    """The build's stage times (setup, distill, score, latency) stored in the library's config."""
    from lana.library import Library

    return dict(Library(path).config.get("stages_s", {}))


class RememberedFailure(RuntimeError):
    """A row's ``make`` failed before under the same cache key; the message quotes that error."""


class WorkloadRun:
    """One workload being run: teacher, library, data, the models made so far, and their cache.

    Each method's result at a budget is kept in ``OUT/<workload>/<budget>/<method>/``: its row
    (``row.json``, written last) and its weights. A rerun with the same workload settings, teacher
    and library rebuilds the model from them instead of training it again; latency is always
    measured anew.
    """

    def __init__(self, workload: Workload, out: Path):
        from lana.context import context_from_library
        from lana.data import load_dataset
        from lana.dist import resolve_device
        from lana.files import file_sha256
        from lana.problem import load_problem

        self.w, self.out = workload, out
        self.device = resolve_device(workload.device)
        self.teacher_info = prepare_teacher(workload, out)
        self.library = prepare_library(workload, self.teacher_info["path"], out)
        self.ctx = context_from_library(self.library["path"])
        self.teacher = self.ctx.teacher.eval()
        self.problem = load_problem(self.library["path"], workload.budget_table)
        self._problems = {workload.budget_table: self.problem}
        self.train_set = load_dataset(
            workload.dataset, "train", workload.img_size, seed=workload.seed, limit=workload.limit
        )
        self.test_set = load_dataset(workload.dataset, "test", workload.img_size, limit=workload.eval_limit)
        self.models, self.rows, self.points = {}, [], []  # points: (predicted drop, top-1 before FT, method)
        self.failures: dict[str, dict[str, str]] = {}  # budget -> method -> the error it raised
        self.factors: dict[str, float] = {}  # budget -> factor of the teacher's latency
        self.key = {
            "workload": {k: v for k, v in asdict(workload).items() if k != "budgets"},
            "teacher_sha256": file_sha256(self.teacher_info["path"]),
            "library_sha256": file_sha256(self.library["path"]),
        }

    def problem_on(self, table: str):
        """The library's ILP problem with its latency on ``table`` (loaded once)."""
        from lana.problem import load_problem

        if table not in self._problems:
            self._problems[table] = load_problem(self.library["path"], table)
        return self._problems[table]

    def evaluate(self, model, limit: int | None = None) -> float:
        """Test top-1 (%) on the first ``limit`` test images (all of ``eval_limit`` by default)."""
        from lana.train import evaluate

        top1 = evaluate(model, self.test_set, device=self.device, limit=limit)
        model.cpu()
        return top1

    def finetune(self, model, epochs: float, desc: str, recipe=None, seed: int = 0) -> float:
        """KD fine-tuning from the teacher (lana's recipe unless ``recipe``), its shuffling and
        augmentation seeded by ``seed``; returns wall seconds."""
        from lana.finetune import FINETUNE_RECIPE, finetune

        for p in model.parameters():  # copies of the teacher inherit its parameters, frozen by KD
            p.requires_grad_(True)
        start = time.perf_counter()
        finetune(
            model,
            self.teacher,
            self.train_set,
            epochs=epochs,
            recipe=replace(recipe or FINETUNE_RECIPE, seed=seed),
            device=self.device,
            max_steps=self.w.max_steps,
            desc=desc,
        )
        model.cpu().eval()
        self.teacher.cpu().eval()
        return time.perf_counter() - start

    def add(self, row: dict, model) -> None:
        """A row; its model is kept for the final timing pass when it is a seed-0 row (the other
        seeds of a method share its architecture, hence its latency)."""
        self.rows.append(row)
        if not row.get("seed"):
            self.models[f"{row['method']}@{row['budget']}"] = model

    def cached_row(self, budget: str, method: str) -> dict:
        """The seed-0 row of ``method`` at ``budget`` (made or reused already)."""
        return next(r for r in self.rows if r["budget"] == budget and r["method"] == method and not r.get("seed"))

    def competitor_key(self) -> dict:
        """What a competitor's row depends on: the workload's settings that it sees (not lana's
        space, scores or calibration), the teacher, the competitors' code and the CPU; never the
        library, so that a change to lana retrains none of them (issue 25 item 3)."""
        from bench.provenance import code_digest, cpu_model

        # (the longer setting's rows key its factor themselves: the others do not depend on it)
        lana_only = {"budgets", "space", "score_images", "random_plans", "calibrate", "corr_images", "longer",
                     "longer_factor"}  # fmt: skip
        return {
            "workload": {k: v for k, v in asdict(self.w).items() if k not in lana_only},
            "teacher_sha256": self.key["teacher_sha256"],
            "code": code_digest("competitors"),
            "cpu": cpu_model(),
        }

    def cached(
        self,
        budget: str,
        method: str,
        make: Callable,
        rebuild: Callable,
        depends: dict | None = None,
        seed: int = 0,
        apart: bool = False,
        remember: tuple[type[Exception], ...] = (),
    ):
        """The row and model of ``method`` at ``budget``: reused from the cache, or ``make(folder)``.

        Args:
            make: ``make(folder) -> (row, model)``; saves the model's weights in ``folder``.
            rebuild: ``rebuild(row, folder) -> model`` from those weights.
            depends: more of the cache key (the lana plan a library plan was solved under).
            seed: the fine-tuning seed (0: the row whose model is timed).
            apart: a competitor (or an ablation built from the teacher alone): cached under
                ``OUT/<workload>/competitors/``, keyed by :meth:`competitor_key`, not the library.
            remember: errors of ``make`` that are cached as a row is (a competitor that cannot
                reach the budget fails the same way on a rerun of the same key): raised again
                as :class:`RememberedFailure`, quoting the first, without running ``make``.

        Raises:
            RememberedFailure: ``make`` raised one of ``remember`` under this key before.
        """
        from bench.provenance import code_digest, cpu_model

        stage = "competitors" if apart else "lana"
        base = self.out / "competitors" if apart else self.out
        folder = base / budget / method / (f"seed{seed}" if seed else "")
        own = self.competitor_key() if apart else {**self.key, "code": code_digest("lana"), "cpu": cpu_model()}
        key = {**own, **(depends or {}), "seed": seed}
        failed = read_json(folder / "failure.json")
        if remember and failed and failed.get("key") == json.loads(json.dumps(key, default=str)):
            log.info("%s %s seed %d: failed before under this key (%s)", budget, method, seed, folder)
            raise RememberedFailure(failed["error"])
        saved = read_json(folder / "row.json")
        if saved and saved.get("key") == json.loads(json.dumps(key, default=str)):
            try:
                model = rebuild(saved["row"], folder).eval()
            except (OSError, RuntimeError, KeyError, ValueError) as error:
                log.warning("cannot reuse %s (%s): recomputing", folder, error)
            else:
                log.info("%s %s seed %d: reusing %s", budget, method, seed, folder)
                self.points += [tuple(p) for p in saved["points"]]
                row = {**saved["row"], "cached": True}
                self.add(row, model)
                return row, model
        first = len(self.points)
        try:
            row, model = make(folder)
        except remember as error:
            write_json(folder / "failure.json", {"key": key, "error": f"{type(error).__name__}: {error}"})
            raise
        row = {**row, "seed": seed, "stage": stage, "code": key["code"], "cpu": key["cpu"]}
        write_json(folder / "row.json", {"key": key, "row": row, "points": self.points[first:]})
        self.add(row, model)
        return row, model
