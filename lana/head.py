"""Never plan on a random head: a pretrained teacher whose classifier does not know the data
set's classes is fine-tuned on them first (issue 27 item 3).

An ImageNet-pretrained model keeps its head only when the classes *are* its own (a folder of
ImageNet synsets, ``n01440764``, whose labels then map to the head's outputs). Any other data set
re-initialises the classifier when the model is created for its number of classes: distilling,
scoring and planning on that teacher would measure every top-1 on a random head. So ``lana build``
and ``lana accelerate`` first fine-tune the teacher (a cached stage, ``OUT/teacher/``, with its
own ``--teacher-epochs``), or refuse and print the ``lana teacher`` command that does it.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from dataclasses import asdict, replace
from pathlib import Path

from lana.files import read_json

__all__ = ["HeadError", "TEACHER_FIELDS", "fitted_teacher"]

log = logging.getLogger(__name__)

# the settings that make a fine-tuned teacher reusable for a build
TEACHER_FIELDS = ("model", "dataset", "img_size", "epochs", "score_split", "seed", "limit", "max_steps")


class HeadError(ValueError):
    """The teacher's classifier does not fit the data set and fine-tuning it was refused."""


def _teacher_command(config, out: Path) -> str:
    words = ["lana", "teacher", "--model", config.model, "--pretrained", "--dataset", config.dataset,
             "--img-size", str(config.img_size), "--epochs", f"{config.teacher_epochs:g}", "--out", str(out)]  # fmt: skip
    if config.score_split is not None:
        words += ["--score-split", str(config.score_split)]
    return shlex.join(words)


def fitted_teacher(config, out: str | Path, refuse: bool = False):
    """The build configuration with a teacher whose head fits the data set's classes.

    Args:
        config: a :class:`lana.pipeline.BuildConfig`.
        out: where the fine-tuned teacher goes (``teacher.safetensors``, ``teacher.json``);
            reused when it was made with the same settings (:data:`TEACHER_FIELDS`).
        refuse: raise :class:`HeadError` (with the ``lana teacher`` command) instead of fine-tuning.

    Returns:
        ``config`` unchanged (a checkpoint, a teacher trained from scratch, or synset classes,
        then with ``synsets=True``), or with ``checkpoint`` set to the fine-tuned teacher.
    """
    from lana.data import is_fashion_mnist, split_of
    from lana.streamed import synset_labels
    from lana.teacher import TeacherConfig, train_teacher

    if config.checkpoint or not config.pretrained:
        return config  # a checkpoint was trained for its classes (its head size is checked on load)
    if config.synsets:
        return config
    if not is_fashion_mnist(config.dataset) and synset_labels(str(config.dataset), config.model):
        log.info("%s: the classes are ImageNet synsets: %s keeps its pretrained head", config.dataset, config.model)
        return replace(config, synsets=True)
    classes = split_of(asdict(config), "train", limit=1).num_classes
    out = Path(out)
    if refuse:
        raise HeadError(
            f"{config.model}'s pretrained classifier does not know the {classes} classes of {config.dataset}: "
            f"planning on it would score every candidate on a random head. Fine-tune it first:\n  "
            f"{_teacher_command(config, out)}\nthen pass --checkpoint {out / 'teacher.safetensors'} "
            "(or drop --no-teacher-finetune to let lana do it)"
        )
    teacher = TeacherConfig(
        model=config.model, dataset=config.dataset, img_size=config.img_size, epochs=config.teacher_epochs,
        pretrained=True, device=config.device, seed=config.seed, limit=config.limit, max_steps=config.max_steps,
        score_split=config.score_split,
    )  # fmt: skip
    wanted = {k: getattr(teacher, k) for k in TEACHER_FIELDS}
    weights = out / "teacher.safetensors"
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun rank 0 fine-tunes; the others wait for it
        while not _done(out, wanted):
            time.sleep(5)
    elif _done(out, wanted):
        log.info("reusing the teacher fine-tuned for %s's classes: %s", config.dataset, weights)
    else:
        log.info("%s's classifier does not know the %d classes of %s: fine-tuning the teacher for %g epochs first "
                 "(--teacher-epochs; --no-teacher-finetune refuses instead)", config.model, classes, config.dataset,
                 config.teacher_epochs)  # fmt: skip
        train_teacher(teacher, out)
    return replace(config, checkpoint=str(weights))


def _done(out: Path, wanted: dict) -> bool:
    """Whether ``out`` holds a teacher fine-tuned with the ``wanted`` settings."""
    done = read_json(out / "teacher.json")
    return (
        bool(done)
        and (out / "teacher.safetensors").is_file()
        and ({k: done["config"].get(k) for k in TEACHER_FIELDS} == wanted)
    )
