"""docs/cli.md is generated from the real ``--help`` output: it must never drift from the code."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from bucketly.cli import docs
from bucketly.cli.app import OP_COMMANDS, cli, run
from bucketly.protocol import OPS

DOCS = Path(__file__).parent.parent / "docs" / "cli.md"


def test_docs_cli_md_is_current() -> None:
    assert DOCS.read_text(encoding="utf-8") == docs.generate(), (
        "docs/cli.md is out of date: run 'python -m bucketly.cli.docs docs/cli.md'"
    )


@pytest.mark.parametrize("path", [path for path, _ in docs.commands()],
                         ids=lambda path: " ".join(path) or "bucketly")
def test_docs_show_what_help_prints(path: tuple[str, ...]) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert run([*path, "--help"]) == 0
    assert out.getvalue() == docs.help_text(path)
    assert f"```text\n{out.getvalue()}```" in DOCS.read_text(encoding="utf-8")


def test_every_op_has_a_command() -> None:
    assert set(OPS) <= set(OP_COMMANDS)  # the CLI may be ahead of the server, never behind
    names = {" ".join(path) for path, _ in docs.commands()}
    for command in OP_COMMANDS.values():
        assert command.startswith("(") or command in names, command


def test_every_command_has_help() -> None:
    for path, command in docs.commands(cli):
        assert command.help, f"'bucketly {' '.join(path)}' has no help text"
