"""``lana teacher`` (train or fine-tune a teacher) and ``lana candidates`` (a model's layers and space)."""

from __future__ import annotations

from lana.cli.options import add_model_options, add_run_options, subcommand

__all__ = ["add_parsers"]


def _cmd_teacher(args) -> int:
    from lana.cli.options import img_size
    from lana.data import parse_score_split
    from lana.teacher import TeacherConfig, train_teacher

    config = TeacherConfig(
        model=args.model, dataset=args.dataset, img_size=img_size(args), epochs=args.epochs,
        score_split=parse_score_split(args.score_split),
        checkpoint=args.checkpoint, pretrained=args.pretrained, lr=args.lr, batch_size=args.batch_size,
        optimizer=args.optimizer, max_steps=args.max_steps, device=args.device, workers=args.workers,
        seed=args.seed, limit=args.limit, label_smoothing=args.label_smoothing, augment=args.augment,
        weight_decay=args.weight_decay,
    )  # fmt: skip
    result = train_teacher(config, args.out)
    print(
        f"teacher {result.model}: test top-1 {result.top1:.2f}% after {result.steps} steps "
        f"({result.minutes:.1f} min) -> {result.path}"
    )
    return 0


def _add_teacher(sub) -> None:
    p = subcommand(sub, "teacher", help="train or fine-tune a teacher on a data set")
    add_model_options(p)
    add_run_options(p)
    p.add_argument("--epochs", type=float, default=10, help="training epochs")
    p.add_argument("--lr", type=float, default=None, help="default 0.2 from scratch, 0.01 fine-tuning (SGD)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="optimizer")
    p.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (SGD) or 0.05 (AdamW)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy")
    p.add_argument("--augment", choices=["crop-flip", "flip", "none"], default="flip", help="training augmentation")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--out", default="runs/teacher", help="folder for teacher.safetensors and teacher.json")
    p.set_defaults(func=_cmd_teacher)


def _cmd_candidates(args) -> int:
    from lana.layers import describe_space

    img_size = args.img_size if args.img_size is not None else 32
    summary = describe_space(args.model, space=args.space, img_size=img_size, num_classes=args.num_classes)
    print(summary.to_text())
    return 0


def _add_candidates(sub) -> None:
    p = subcommand(sub, "candidates", help="list the replaceable layers of a model and the size of its candidate space")
    p.add_argument("--model", default="resnet18", help="timm model name")
    p.add_argument(
        "--space", default="default", help="tiny, compact, default, full, or patterns like 'ir_k3_*,dw_*,id'"
    )
    p.add_argument(
        "--img-size", type=int, default=None,
        help="input side in pixels (as lana build takes it; default 32, Fashion-MNIST's)",
    )  # fmt: skip
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the model's head")
    p.set_defaults(func=_cmd_candidates)


def add_parsers(sub) -> None:
    """Adds ``teacher`` and ``candidates`` to the ``lana`` subparsers."""
    _add_teacher(sub)
    _add_candidates(sub)
