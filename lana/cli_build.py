"""CLI handlers for ``lana build``, ``lana latency`` and ``lana info``."""

from __future__ import annotations

import json

__all__ = ["add_build_parser", "add_latency_parser", "add_info_parser", "add_correlate_parser"]


def _cmd_build(args) -> int:
    from lana.pipeline import BuildConfig, build

    config = BuildConfig(
        model=args.model,
        checkpoint=args.checkpoint,
        pretrained=args.pretrained,
        dataset=args.dataset,
        img_size=args.img_size,
        space=args.space,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_steps=args.max_steps,
        device=args.device,
        seed=args.seed,
        limit=args.limit,
        score_images=args.score_images,
        tables=tuple(args.tables.split(",")) if args.tables else None,
        threads=args.threads,
        skip_score=args.skip_score,
        skip_latency=args.skip_latency,
        checkpoint_every_s=args.checkpoint_every,
        latency_rounds=args.latency_rounds,
        int8=args.int8,
    )
    result = build(config, args.out, restart=args.restart)
    print(
        f"library {result.path}: {result.layers} layers, {result.candidates} candidates; "
        + ", ".join(f"{k} {v:.0f}s" for k, v in result.stages_s.items())
        + f"; peak memory {result.peak_memory_mb:.0f} MB"
    )
    return 0


def add_build_parser(sub) -> None:
    from lana.cli import _add_common_model, _add_run_opts

    p = sub.add_parser("build", help="distil, score and time every candidate of every layer into a library file")
    _add_common_model(p)
    _add_run_opts(p)
    p.add_argument("--space", default="default", help="tiny, default, full, or patterns like 'ir_k3_*,dw_*,id'")
    p.add_argument("--epochs", type=float, default=1.0, help="distillation epochs (default 1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the candidates")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--score-images", type=int, default=2000, help="held-out images to score candidates on")
    p.add_argument("--tables", default=None, help="latency tables, e.g. cpu-b1,cpu-b64 (default), cpu-ort-b1, cuda-b64")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for latency (default: all cores)")
    p.add_argument("--skip-score", action="store_true", help="do not score (the library stays incomplete)")
    p.add_argument("--skip-latency", action="store_true", help="do not time (the library stays incomplete)")
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="checkpoint interval of the distillation",
    )
    p.add_argument("--latency-rounds", type=int, default=5, help="interleaved timing passes over all candidates")
    p.add_argument(
        "--int8",
        action="store_true",
        help="add an int8 twin of every candidate (post-training static quantization on training images), "
        "scored and timed as int8 so that the ILP mixes precisions per layer; CPU only: needs --device cpu and cpu-b* tables",
    )
    p.add_argument(
        "--restart", action="store_true", help="discard an interrupted build of other settings and start over"
    )
    p.add_argument("--out", required=True, help="library file to write (LIB.h5)")
    p.set_defaults(func=_cmd_build)


def _cmd_latency(args) -> int:
    from lana.latency import make_meter
    from lana.library import read_info
    from lana.pipeline import add_latency_table, context_from_library, load_latency_table, parse_table_name

    name = args.name or _default_name(args)
    exists = any(t["name"] == name for t in read_info(args.library)["latency_tables"])
    if exists and args.check and not args.remeasure:
        ctx, table = context_from_library(args.library), load_latency_table(args.library, name)
        print(f"checking the stored table {name} (pass --remeasure to time it again)")
    else:
        result = add_latency_table(args.library, name, threads=args.threads, rounds=args.rounds)
        ctx, table = result["context"], result["table"]
        print(
            f"table {name}: teacher {table.teacher_ms:.3f} ms, fixed part {table.fixed_ms:.3f} ms "
            f"({table.device}/{table.backend}, batch {table.batch_size})"
        )
    if args.check:
        from lana.latency_check import check_latency, random_choices

        spec = parse_table_name(name)
        meter = make_meter(spec["device"], spec["backend"], spec["batch_size"], threads=args.threads)
        plans = random_choices(table, args.check, seed=args.seed)
        report = check_latency(
            ctx.inference_teacher(), table, ctx.layers, plans, ctx.load_inference, meter, input_shape=ctx.input_shape
        )
        print(report.to_text())
    return 0


def _default_name(args) -> str:
    backend = "" if args.backend == "torch" else "-ort"
    return f"{args.device}{backend}-b{args.batch_size}"


def add_latency_parser(sub) -> None:
    p = sub.add_parser("latency", help="time a library's candidates on a target and add the table to it")
    p.add_argument("library")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over all candidates")
    p.add_argument("--name", default=None, help="table name (default from device/backend/batch, e.g. cpu-ort-b1)")
    p.add_argument(
        "--check",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="K",
        help="also time the teacher and K random students end to end (default K=10)",
    )
    p.add_argument("--remeasure", action="store_true", help="with --check: time the table again even if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_latency)


def _cmd_info(args) -> int:
    from lana.library import format_info, read_info

    info = read_info(args.library)
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="what a library holds (a table, or --json)")
    p.add_argument("library")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_info)


def _cmd_correlate(args) -> int:
    from lana.correlation import score_correlation

    report = score_correlation(args.library, count=args.students, seed=args.seed, device=args.device, limit=args.limit)
    print(report.to_text())
    return 0


def add_correlate_parser(sub) -> None:
    p = sub.add_parser("correlate", help="which score kind predicts real top-1 best (random students, Spearman)")
    p.add_argument("library")
    p.add_argument("--students", type=int, default=20)
    p.add_argument("--limit", type=int, default=None, help="images of the score split (default: as built)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_correlate)
