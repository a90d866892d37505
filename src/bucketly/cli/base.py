"""What every ``bucketly`` command shares: its click classes and small helpers.

``BucketlyCommand`` and ``BucketlyGroup`` add the connection and output options to every command
(see ``bucketly.cli.invocation``) and lay out ``--help``; ``current_invocation()`` is the command
line being run, with its settings, client and output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .invocation import CommonOption, Invocation, common_option_names, common_params
from .output import EXIT_USAGE, CliError

__all__ = [
    "CONTEXT_SETTINGS",
    "EXIT_CANCELLED",
    "EXIT_CLI_BUG",
    "HELP_WIDTH",
    "YES",
    "BucketlyCommand",
    "BucketlyGroup",
    "OutputClosed",
    "confirm",
    "current_invocation",
    "parse_json",
]

#: Fixed help width, so that ``--help`` (and docs/cli.md, generated from it) reads the same
#: on every terminal.
HELP_WIDTH = 100
CONTEXT_SETTINGS: dict[str, Any] = {
    "max_content_width": HELP_WIDTH,
    "terminal_width": HELP_WIDTH,
    "help_option_names": ["-h", "--help"],
}
#: Exit status for a bug in the CLI itself (as for ``InternalError``: EX_SOFTWARE).
EXIT_CLI_BUG = 70
#: Exit status when the user answers "no" to a confirmation.
EXIT_CANCELLED = 1


class _HelpFormat:
    """Lists a command's own options first; the common ones in full only in ``bucketly -h``."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        own: list[tuple[str, str]] = []
        common: list[tuple[str, str]] = []
        for param in self.get_params(ctx):  # type: ignore[attr-defined]
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record is not None:
                (common if isinstance(param, CommonOption) else own).append(record)
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        if common:
            with formatter.section("Connection and output options"):
                if ctx.parent is None:
                    formatter.write_dl(common)
                else:
                    formatter.write_text(f"{common_option_names()}: see 'bucketly --help'.")
        if isinstance(self, click.Group):
            self.format_commands(ctx, formatter)


class BucketlyCommand(_HelpFormat, click.Command):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["params"] = list(kwargs.get("params") or []) + common_params()
        super().__init__(*args, **kwargs)


class BucketlyGroup(_HelpFormat, click.Group):
    command_class = BucketlyCommand
    group_class = type  # subgroups are BucketlyGroups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["params"] = list(kwargs.get("params") or []) + common_params()
        super().__init__(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined: the order of the docs

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # click would swallow it and exit 0; run() reports it instead.
            raise OutputClosed() from None


class OutputClosed(Exception):
    """The reader of our output went away (``bucketly dump b | head``)."""


def current_invocation() -> Invocation:
    """The command line being run (in the shell: this line, sharing its connection)."""
    return click.get_current_context().ensure_object(Invocation)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} is not valid JSON ({exc.msg} at column {exc.colno}); quote it for the "
            """shell, e.g. '{"user": "u1"}' or '"text"'""", EXIT_USAGE,
        ) from None


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise CliError(f"{question} Refusing to without --yes when not on a terminal",
                       EXIT_USAGE)
    if not click.confirm(question, default=False, err=True):
        raise CliError("cancelled; nothing was done", EXIT_CANCELLED)


YES = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
