"""``lana build``, ``lana latency``, ``lana info``, ``lana correlate`` and ``lana calibrate``: making and
reading libraries."""

from __future__ import annotations

import json
import sys

from lana.cli.options import DEVICES, add_build_options, add_model_options, add_run_options, build_config, subcommand

__all__ = ["add_parsers"]


def _cmd_build(args) -> int:
    from lana.pipeline import build

    config = build_config(
        args, batch_size=args.batch_size, lr=args.lr, skip_score=args.skip_score, skip_latency=args.skip_latency,
        checkpoint_every_s=args.checkpoint_every,
    )  # fmt: skip
    result = build(config, args.out, restart=args.restart)
    if result.reused:
        print(
            f"library {result.path} is already complete with these settings ({result.layers} layers, "
            f"{result.candidates} candidates): nothing to "
            + ("build; calibrating it" if args.calibrate else "do; --restart rebuilds it")
        )
    else:
        _print_build(result)
    if args.calibrate:
        from lana.calibrate import CalibrationConfig, calibrate

        print(calibrate(result.path, CalibrationConfig(device=args.device, seed=args.seed)).to_text())
    return 0


def _print_build(result) -> None:
    print(
        f"library {result.path}: {result.layers} layers, {result.candidates} candidates; "
        + ", ".join(f"{k} {v:.0f}s" for k, v in result.stages_s.items())
        + f"; peak memory {result.peak_memory_mb:.0f} MB"
    )


def _add_build(sub) -> None:
    p = subcommand(sub, "build", help="distil, score and time every candidate of every layer into a library file")
    add_model_options(p)
    add_run_options(p)
    add_build_options(p)
    p.add_argument("--batch-size", type=int, default=128, help="images per distillation step")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate of the candidates")
    p.add_argument("--skip-score", action="store_true", help="do not score (the library stays incomplete)")
    p.add_argument("--skip-latency", action="store_true", help="do not time (the library stays incomplete)")
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="checkpoint interval of the distillation",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over: discard an interrupted build of other settings, or rebuild a complete library "
        "(its tables added with lana latency are kept where the candidates are the same)",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="then fit the score to whole students (lana calibrate); on a complete library, only that",
    )
    p.add_argument("--out", required=True, help="library file to write (LIB.h5)")
    p.set_defaults(func=_cmd_build)


def _cmd_latency(args) -> int:
    from lana.context import context_from_library
    from lana.latency import LatencyTable
    from lana.library import Library
    from lana.meters import meter_for_table, table_name
    from lana.noise import describe
    from lana.pipeline import add_latency_table
    from lana.table_names import canonical_table

    library = Library(args.library)
    threads = args.threads
    if args.retime:  # the stored table's target, timed again
        stored = library.table(args.retime)
        name = args.retime if args.retime in library.tables else canonical_table(args.retime)
        threads = threads or stored.get("threads")
    else:
        name = args.name or table_name(args.device, args.backend, args.batch_size)
    if name in library.tables and args.check and not args.remeasure and not args.retime:
        ctx, table = context_from_library(library), LatencyTable.from_library(library, name)
        print(f"checking the stored table {name} (pass --remeasure to time it again)")
    else:
        result = add_latency_table(args.library, name, threads=threads, rounds=args.rounds)
        ctx, table = result["context"], result["table"]
        noise = table.fingerprint.get("noise", {})
        print(
            f"table {table.name}: teacher {table.teacher_ms:.3f} ms, fixed part {table.fixed_ms:.3f} ms "
            f"({table.device}/{table.backend}, batch {table.batch_size}); other processes used "
            f"{noise.get('others_cores')} cores, the teacher drifted {noise.get('teacher_drift_pct')}%"
        )
        warning = describe(table.name, table.attrs() | {"fingerprint": table.fingerprint})
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    if args.check:
        from lana.latency_check import check_latency, random_choices

        meter = meter_for_table(name, threads=args.threads)
        plans = random_choices(table, args.check, seed=args.seed)
        report = check_latency(
            ctx.inference_teacher(), table, ctx.layers, plans, ctx.load_inference, meter, input_shape=ctx.input_shape
        )
        print(report.to_text())
    return 0


def _add_latency(sub) -> None:
    p = subcommand(sub, "latency", help="time a library's candidates on a target and add the table to it")
    p.add_argument("library", help="the library .h5 file")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the target device")
    p.add_argument(
        "--backend",
        choices=["torch", "onnxruntime", "openvino"],
        default="torch",
        help="runtime that times the candidates",
    )
    p.add_argument("--batch-size", type=int, default=1, help="images per timed forward")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over all candidates")
    p.add_argument(
        "--table",
        "--name",
        dest="name",
        default=None,
        help="table name instead of --device/--backend/--batch-size: cpu-b1, ort-b1 (cpu-ort-b1), ov-b64 (cpu-ov-b64)",
    )
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
    p.add_argument(
        "--retime", metavar="TABLE", default=None,
        help="time a stored table again on its own target and threads and replace it (for one flagged noisy)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the random students")
    p.set_defaults(func=_cmd_latency)


def _cmd_info(args) -> int:
    from lana.library import format_info, read_info

    info = read_info(args.library)
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def _add_info(sub) -> None:
    p = subcommand(sub, "info", help="what a library holds (a table, or --json)")
    p.add_argument("library", help="the library .h5 file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_info)


def _cmd_correlate(args) -> int:
    from lana.correlation import score_correlation

    report = score_correlation(args.library, count=args.students, seed=args.seed, device=args.device, limit=args.limit)
    print(report.to_text())
    return 0


def _add_correlate(sub) -> None:
    p = subcommand(sub, "correlate", help="which score kind predicts real top-1 best (random students, Spearman)")
    p.add_argument("library", help="the library .h5 file")
    p.add_argument("--students", type=int, default=20, help="random students to assemble and measure")
    p.add_argument("--limit", type=int, default=None, help="images of the score split (default: as built)")
    p.add_argument(
        "--device", choices=DEVICES, default="auto", help="where the students are evaluated (auto: cuda when available)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random students")
    p.set_defaults(func=_cmd_correlate)


def _cmd_calibrate(args) -> int:
    from lana.calibrate import CalibrationConfig, calibrate

    config = CalibrationConfig(samples=args.samples, time_fraction=args.time_fraction, seed=args.seed,
                               device=args.device, table=args.table, images=args.images)  # fmt: skip
    print(calibrate(args.library, config).to_text())
    return 0


def _add_calibrate(sub) -> None:
    p = subcommand(
        sub,
        "calibrate",
        help="fit the summed score to whole students of the library; stores score kind top1_cal",
        description="Assemble whole students from the library (ILP optima and random plans across the latency "
        "range, no fine-tuning), measure their top-1 drop on the score split, and fit per-layer, per-family and "
        "per-candidate corrections to the one-swap scores (ridge, shrunk toward them). The calibrated kind "
        "top1_cal is stored in the library and becomes the default score of lana solve.",
    )
    p.add_argument("library", help="the library .h5 file")
    p.add_argument("--samples", type=int, default=None, help="students to measure (default: by --time-fraction)")
    p.add_argument("--time-fraction", type=float, default=0.15, help="share of the build time calibration may take")
    p.add_argument("--table", default=None, help="latency table whose range the plans span (default: the first)")
    p.add_argument("--images", type=int, default=None, help="score-split images per student (default: as built)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="where students are evaluated")
    p.add_argument("--seed", type=int, default=0, help="seed of the random plans and the held-out split")
    p.set_defaults(func=_cmd_calibrate)


def add_parsers(sub) -> None:
    """Adds ``build``, ``latency``, ``info``, ``correlate`` and ``calibrate`` to the ``lana`` subparsers."""
    _add_build(sub)
    _add_latency(sub)
    _add_info(sub)
    _add_correlate(sub)
    _add_calibrate(sub)
