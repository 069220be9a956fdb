"""CLI handlers for ``lana assemble``, ``lana accelerate`` and ``lana demo``."""

from __future__ import annotations

from lana.cli.options import (
    DEVICES,
    EXIT_BUDGET_NOT_MET,
    add_build_options,
    add_model_options,
    add_run_options,
    build_config,
    subcommand,
)

__all__ = ["add_parsers"]


def _cmd_assemble(args) -> int:
    from lana.context import context_from_library
    from lana.data import split_of
    from lana.dist import is_main_process
    from lana.finetune import finetune
    from lana.library import Library
    from lana.plan import Plan, verify_plan
    from lana.student import save_student, student_from_context

    plan = verify_plan(Plan.load(args.plan), args.library)  # before any work: one message for all that is wrong
    ctx = context_from_library(args.library)
    # float: fine-tuning needs it, and save_student keeps float weights (load_student quantizes int8 layers)
    student = student_from_context(ctx, plan, float_only=True)
    if args.finetune_epochs > 0:  # data-parallel under torchrun (lana.train.fit)
        built = Library(args.library).config
        train_set = split_of(built, "train", limit=built.get("limit"))
        finetune(
            student, ctx.teacher, train_set, epochs=args.finetune_epochs, device=args.device, max_steps=args.max_steps
        )
    if not is_main_process():  # under torchrun rank 0 writes the student
        return 0
    out = save_student(student.cpu().eval(), plan, ctx, args.out)
    print(f"student written to {out} (student.safetensors, plan.json, student.json)")
    return 0


def _add_assemble(sub) -> None:
    p = subcommand(sub, "assemble", help="build the student of a plan from a library (optionally fine-tune it)")
    p.add_argument("library", help="the library .h5 file the plan was solved on")
    p.add_argument("--plan", required=True, help="plan.json from lana solve --out")
    p.add_argument("--out", required=True, help="directory for student.safetensors, plan.json, student.json")
    p.add_argument("--finetune-epochs", type=float, default=0.0, help="KD fine-tuning epochs (0: none)")
    p.add_argument("--max-steps", type=int, default=None, help="limit optimisation steps (smoke runs, tests)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when available, else cpu")
    p.set_defaults(func=_cmd_assemble)


def _cmd_accelerate(args) -> int:
    from lana.accelerate import AccelerateConfig, FinetuneConfig, accelerate, format_report
    from lana.plan import SolveOptions

    config = AccelerateConfig(
        build=build_config(args),
        budget=args.budget,
        solve=SolveOptions(table=args.table),
        finetune=FinetuneConfig(epochs=args.finetune_epochs, max_steps=args.max_steps),
        library=args.library,
        select=args.select,
        diverse=args.diverse,
        min_diff=args.min_diff,
        eval_limit=args.eval_limit,
        export=not args.no_export,
        recheck=args.recheck,
    )
    report = accelerate(config, args.out)
    print(format_report(report))
    print(f"report: {args.out}/report.json")
    return 0 if report["budget_met"] else EXIT_BUDGET_NOT_MET


def _add_accelerate(sub) -> None:
    p = subcommand(sub, "accelerate", help="build (or reuse) a library, solve, assemble, fine-tune, measure and export")
    add_model_options(p)
    add_run_options(p)
    add_build_options(p, epochs_flag="--build-epochs")
    p.add_argument(
        "--budget", required=True, help="0.5x (a factor of the teacher's predicted latency on the table) or 3.2ms"
    )
    p.add_argument("--table", default=None, help="latency table the budget refers to (default: the library's first)")
    p.add_argument("--library", default=None, help="library file (default OUT/library.h5; reused when it matches)")
    p.add_argument("--finetune-epochs", type=float, default=1.0, help="KD fine-tuning epochs of the student")
    p.add_argument(
        "--diverse", type=int, default=4,
        help="the ILP's K best plans (differing pairwise in --min-diff layers) in the measured selection's pool",
    )  # fmt: skip
    p.add_argument("--min-diff", type=int, default=2, help="layers in which the diverse plans differ pairwise")
    p.add_argument(
        "--no-select", dest="select", action="store_false",
        help="ship the ILP's plan as it is, without the measured selection (K diverse ILP plans, greedy, "
        "slim-only and uniform-width plans run on the score split and timed; the most accurate within budget)",
    )  # fmt: skip
    p.add_argument(
        "--no-recheck", dest="recheck", action="store_false",
        help="ship the first fine-tuned student as it is; by default it is timed against the budget again and, "
        "outside [0.95, 1.0] of it (its timing's 95% interval too), a plan is chosen again for the latency "
        "fine-tuning moved it to and fine-tuned",
    )  # fmt: skip
    p.add_argument("--eval-limit", type=int, default=None, help="test images for the final top-1 (default: all)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX and TorchScript exports")
    p.add_argument("--out", required=True, help="folder for the student, its report and exports")
    p.set_defaults(func=_cmd_accelerate)


def _cmd_demo(args) -> int:
    from lana.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, teacher_epochs=args.teacher_epochs, max_steps=args.max_steps, device=args.device))
    return 0


def _add_demo(sub) -> None:
    p = subcommand(
        sub, "demo", help="the whole story on Fashion-MNIST with resnet18 at 32 px (cached after the first run)"
    )
    p.add_argument("--out", default="runs/demo", help="folder of the demo's teacher, library and students")
    p.add_argument("--teacher-epochs", type=float, default=None, help="teacher training epochs (default: the demo's)")
    p.add_argument("--max-steps", type=int, default=None, help="limit every stage (smoke runs)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when available, else cpu")
    p.set_defaults(func=_cmd_demo)


def add_parsers(sub) -> None:
    """Adds ``assemble``, ``accelerate`` and ``demo`` to the ``lana`` subparsers."""
    _add_assemble(sub)
    _add_accelerate(sub)
    _add_demo(sub)
