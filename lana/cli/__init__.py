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
import re
import sys

from lana.cli import build, solve, student, teacher
from lana.cli.options import EXIT_BAD_INPUT, EXIT_CODES, EXIT_INFEASIBLE

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from lana import __version__

    parser = argparse.ArgumentParser(
        prog="lana", description="Latency-aware network acceleration for timm CNNs.", epilog=EXIT_CODES
    )
    parser.add_argument("--version", action="version", version=f"lana {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (teacher, build, solve, student):
        group.add_parsers(sub)
    return parser


# options whose value may start with "-" (a negative budget is bad input, not an unknown flag)
_VALUE_OPTIONS = ("--budget", "--budgets", "--extra-budget")


def _join_values(argv: list[str]) -> list[str]:
    """``--budget -1x`` as ``--budget=-1x``, so that argparse hands the value to the option
    (and parse_budget says what is wrong with it) instead of calling it an unknown flag."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in _VALUE_OPTIONS and i + 1 < len(argv) and re.match(r"-[\d.]", argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs ``lana``; returns the exit code (see ``EXIT_CODES``)."""
    from lana.solver import InfeasibleBudget

    parser = build_parser()
    args = parser.parse_args(_join_values(list(sys.argv[1:] if argv is None else argv)))
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except InfeasibleBudget as error:
        print(f"lana {args.command}: infeasible: {error}", file=sys.stderr)
        return EXIT_INFEASIBLE
    except (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError) as error:
        if args.verbose:
            raise
        message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
        print(f"lana {args.command}: error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", EXIT_BAD_INPUT)


if __name__ == "__main__":
    raise SystemExit(main())
