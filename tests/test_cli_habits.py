"""CLI habits (issue 18, the parts done so far): global flags after the subcommand, help on every
option, and a failed start that leaves no work directory behind."""

import argparse

import pytest

from lana.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("argv", [["-v", "info", "lib.h5"], ["info", "lib.h5", "-v"], ["info", "-v", "lib.h5"]])
def test_verbose_is_accepted_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert args.verbose is True and args.quiet is False


def test_without_global_flags_both_are_off():
    args = build_parser().parse_args(["solve", "lib.h5", "--budget", "0.5x"])
    assert args.verbose is False and args.quiet is False


def test_every_subcommand_has_a_description_and_every_option_a_help():
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        if not sub.description:
            missing.append(f"{name}: no description")
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_device_is_a_choice_wherever_it_is_an_option():
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if "--device" in action.option_strings:
                assert action.choices and "cpu" in action.choices, name


def test_a_build_that_fails_to_start_leaves_no_work_directory(tmp_path, tiny_build):
    from lana.pipeline import BuildConfig, build

    out = tmp_path / "lib.h5"
    with pytest.raises((FileNotFoundError, ValueError)):
        build(BuildConfig(**{**tiny_build, "checkpoint": str(tmp_path / "missing.pt")}), out)
    assert not out.with_name(out.name + ".work").exists() and not out.exists()
    with pytest.raises(ValueError):
        build(BuildConfig(**{**tiny_build, "space": "no_such_space"}), out)
    assert not out.with_name(out.name + ".work").exists()
