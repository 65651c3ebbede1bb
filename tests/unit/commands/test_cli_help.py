"""The help of every command is argparse's, its width found without importing shutil."""

from __future__ import annotations

import argparse
import shutil

import pytest

from imageward import cli

COMMANDS = [[], ["run"], ["dev"], ["check"], ["plan"], ["agent"]]


def _helps() -> list[str]:
    texts = [cli.build_parser().format_help(), cli.build_parser().format_usage()]
    for argv in COMMANDS[1:]:
        parser = cli.build_parser(argv)
        command = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices[argv[0]]
        texts += [command.format_help(), command.format_usage()]
    return texts


@pytest.mark.parametrize("columns", [None, "40", "120", "0", "-3", "wide", ""])
@pytest.mark.parametrize("lines", [None, "20", "x"])
def test_width_and_help_are_argparses(
    monkeypatch: pytest.MonkeyPatch, columns: str | None, lines: str | None
) -> None:
    for name, value in (("COLUMNS", columns), ("LINES", lines)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert cli._terminal_columns() == shutil.get_terminal_size().columns
    ours = _helps()
    monkeypatch.setattr(cli, "_help_formatter", lambda: argparse.HelpFormatter)
    assert ours == _helps()
