"""The ``lana`` command: a thin layer that parses, calls one public function and prints.

One module per group of subcommands: :mod:`lana.cli.teacher` (teacher, candidates),
:mod:`lana.cli.build` (build, latency, info, correlate), :mod:`lana.cli.solve` (solve, pareto),
:mod:`lana.cli.student` (assemble, accelerate, demo); shared options in :mod:`lana.cli.options`.
Heavy imports (torch, timm) happen inside the handlers, so that ``lana solve``/``pareto``/``info``
start without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lana.cli import build, solve, student, teacher

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lana", description="Latency-aware network acceleration for timm CNNs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (teacher, build, solve, student):
        group.add_parsers(sub)
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
