"""CLI handlers for ``lana assemble``, ``lana accelerate`` and ``lana demo``."""

from __future__ import annotations

import json

__all__ = ["add_assemble_parser", "add_accelerate_parser", "add_demo_parser"]


def _cmd_assemble(args) -> int:
    from lana.data import load_dataset
    from lana.finetune import finetune
    from lana.pipeline import context_from_library
    from lana.plan import Plan
    from lana.student import save_student, student_from_context

    ctx = context_from_library(args.library)
    plan = Plan.load(args.plan)
    # float: fine-tuning needs it, and save_student keeps float weights (load_student quantizes int8 layers)
    student = student_from_context(ctx, plan, float_only=True)
    if args.finetune_epochs > 0:
        import h5py

        with h5py.File(args.library, "r") as f:
            built = json.loads(f.attrs["config"])
        train_set = load_dataset(built["dataset"], "train", built["img_size"], limit=built.get("limit"))
        finetune(
            student, ctx.teacher, train_set, epochs=args.finetune_epochs, device=args.device, max_steps=args.max_steps
        )
    out = save_student(student.cpu().eval(), plan, ctx, args.out)
    print(f"student written to {out} (student.safetensors, plan.json, student.json)")
    return 0


def add_assemble_parser(sub) -> None:
    p = sub.add_parser("assemble", help="build the student of a plan from a library (optionally fine-tune it)")
    p.add_argument("library")
    p.add_argument("--plan", required=True, help="plan.json from lana solve --out")
    p.add_argument("--out", required=True, help="directory for student.safetensors, plan.json, student.json")
    p.add_argument("--finetune-epochs", type=float, default=0.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_assemble)


def _cmd_accelerate(args) -> int:
    from lana.accelerate import AccelerateConfig, accelerate, format_report

    config = AccelerateConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        dataset=args.dataset,
        img_size=args.img_size,
        space=args.space,
        budget=args.budget,
        table=args.table,
        library=args.library,
        build_epochs=args.build_epochs,
        finetune_epochs=args.finetune_epochs,
        max_steps=args.max_steps,
        device=args.device,
        diverse=args.diverse,
        min_diff=args.min_diff,
        limit=args.limit,
        score_images=args.score_images,
        eval_limit=args.eval_limit,
        export=not args.no_export,
        seed=args.seed,
        tables=tuple(args.tables.split(",")) if args.tables else None,
        latency_rounds=args.latency_rounds,
        threads=args.threads,
        int8=args.int8,
    )
    report = accelerate(config, args.out)
    print(format_report(report))
    print(f"report: {args.out}/report.json")
    return 0 if report["budget_met"] else 3


def add_accelerate_parser(sub) -> None:
    from lana.cli import _add_common_model, _add_run_opts

    p = sub.add_parser("accelerate", help="build (or reuse) a library, solve, assemble, fine-tune, measure and export")
    _add_common_model(p)
    _add_run_opts(p)
    p.add_argument("--budget", required=True, help="0.5x (of the teacher's latency) or 3.2ms")
    p.add_argument("--table", default=None, help="latency table the budget refers to (default: the library's first)")
    p.add_argument("--space", default="default")
    p.add_argument("--library", default=None, help="library file (default OUT/library.h5; reused when it matches)")
    p.add_argument("--tables", default=None, help="latency tables to build, e.g. cpu-b1,cpu-b64")
    p.add_argument("--build-epochs", type=float, default=1.0)
    p.add_argument("--finetune-epochs", type=float, default=1.0)
    p.add_argument("--diverse", type=int, default=1, help="measure K diverse plans and keep the best")
    p.add_argument("--min-diff", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--score-images", type=int, default=2000)
    p.add_argument("--eval-limit", type=int, default=None, help="test images for the final top-1 (default: all)")
    p.add_argument("--latency-rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for latency (default: all cores)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="add an int8 twin of every candidate (post-training static quantization on training images), "
        "so that the plan may run layers in int8; CPU only: needs --device cpu and cpu-b* tables",
    )
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_accelerate)


def _cmd_demo(args) -> int:
    from lana.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, teacher_epochs=args.teacher_epochs, max_steps=args.max_steps, device=args.device))
    return 0


def add_demo_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="the whole story on Fashion-MNIST with resnet18 at 32 px (cached after the first run)"
    )
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--teacher-epochs", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="limit every stage (smoke runs)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_demo)
