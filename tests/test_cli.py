"""The command line answers at once and explains itself: no heavy import before a command runs, help text on every
option, each command its own examples (and every example parses)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from d3s import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_and_version_import_neither_torch_nor_datasets():
    """`d3s --help`, `d3s --version` and every `d3s COMMAND --help`, in a fresh interpreter."""
    script = f"""
import contextlib, io, json, sys
from d3s.cli import COMMANDS, main
for argv in [["--help"], ["--version"]] + [[c, "--help"] for c in COMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(m for m in ("torch", "datasets", "diffusers", "timm", "gradio") if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_option_has_help_text():
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in _subparsers(cli.build_parser()).items()
               for action in sub._actions if not action.help and not isinstance(action, argparse._HelpAction)]
    assert not missing, missing


def test_each_command_has_its_own_examples_and_they_parse():
    subs = _subparsers(cli.build_parser())
    assert set(subs) == set(cli.COMMANDS) == set(cli.EXAMPLES)
    blocks = [sub.epilog for sub in subs.values()]
    assert all(b and b.startswith("examples:\n") for b in blocks) and len(set(blocks)) == len(blocks)
    for name, block in cli.EXAMPLES.items():
        for line in block.splitlines():
            words = shlex.split(line.split("  #")[0])
            if not words or words[0] != "d3s" or "..." in words:
                continue
            assert words[1] == name, line
            try:
                cli.build_parser(name).parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"example does not parse: {line}")


def test_a_short_run_says_its_critics_never_count():
    from d3s.algorithms import hparams_for
    from d3s.train import schedule_lines

    lines = schedule_lines(50, hparams_for("wasserstein"))
    assert lines[0].startswith("schedule: steps 0-200 cross-entropy only (warm-up)")
    assert lines[1].startswith("warning: --iters 50 ends before the critics count (warm-up: 200 steps)")
    assert len(schedule_lines(5000, hparams_for("wasserstein"))) == 1 and schedule_lines(50, hparams_for("erm")) == []
