"""The interactive shell: ``bucketly`` with no command, or ``bucketly shell``.

Each line is one ``bucketly`` command line without the ``bucketly`` (``bucket list``, ``view
clicks top n=3``), run by the same code as on the command line, over one shared connection. On a
terminal it uses readline: history (kept in a file) and tab completion of commands, options,
bucket, handler, view and user names. With standard input not a terminal it runs the commands
it reads there, without prompts, and exits with the status of the last one.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..errors import BucketlyError
from .config import Settings, history_path
from .invocation import Invocation, connect
from .output import EXIT_USAGE, Output, describe_error, write_error

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["Completer", "Shell"]

#: Lines kept in the history file.
HISTORY_LENGTH = 2000
#: Words the shell understands besides the commands.
BUILTINS = ("help", "exit", "quit")

Runner = Callable[..., int]


class Shell:
    """One interactive session. ``run()`` loops until ``exit``/EOF; returns the exit status."""

    def __init__(self, root: click.Group, runner: Runner, invocation: Invocation) -> None:
        self.root = root
        self.runner = runner
        self.env = invocation.env
        #: Options given with 'bucketly [OPTIONS]' hold for every line.
        self.flags = dict(invocation.flags)
        self.json_mode: bool | None = invocation.flags.get("json")
        self.verbose = bool(invocation.flags.get("verbose"))
        self.settings: Settings = invocation.settings()
        self.interactive = sys.stdin is not None and sys.stdin.isatty()
        self._client: Client | None = None
        self.completer = Completer(root, self)

    # -- the connection -----------------------------------------------------------------------

    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.settings, Output(self.json_mode, self.verbose),
                                   remind=True)
        return self._client

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(BucketlyError):
                client.close()

    # -- the loop -----------------------------------------------------------------------------

    @property
    def prompt(self) -> str:
        session = self._client.session if self._client is not None else None
        user = (session or {}).get("user") or self.settings.user
        who = f"{user}@" if user else ""
        return f"bucketly {who}{self.settings.address}> "

    def run(self) -> int:
        status = 0
        readline = self._setup_readline() if self.interactive else None
        try:
            if self.interactive:
                # Log in now: a wrong password should show before the first command, and tab
                # completion must never stop to ask for one.
                try:
                    self.client()
                except BucketlyError as exc:
                    write_error(describe_error(exc))
                    return exc.exit_code
                except click.ClickException as exc:
                    write_error(exc.format_message())
                    return exc.exit_code
                click.echo(f"connected to {self.settings.address}; 'help' lists the commands, "
                           "Tab completes, Ctrl-D quits", err=True)
            while True:
                line = self._read_line()
                if line is None:
                    break
                if readline is not None and "--password" in line:
                    # Keep passwords typed on a line out of the history file.
                    length = readline.get_current_history_length()
                    if length:
                        readline.remove_history_item(length - 1)
                result = self.execute(line)
                if result is None:
                    break
                status = result
        finally:
            if readline is not None:
                self._save_history(readline)
            self.disconnect()
        return status

    def _read_line(self) -> str | None:
        if not self.interactive:
            line = sys.stdin.readline()
            return line if line else None
        while True:
            try:
                return input(self.prompt)
            except EOFError:
                click.echo()
                return None
            except KeyboardInterrupt:
                click.echo("^C")  # drop the line, as a shell does

    def execute(self, line: str) -> int | None:
        """Run one line; return its exit status, or None to leave the shell."""
        line = line.strip()
        if not line or line.startswith("#"):
            return 0
        try:
            words = shlex.split(line)
        except ValueError as exc:
            write_error(f"cannot parse the line: {exc}")
            return EXIT_USAGE
        if words[0] in ("exit", "quit"):
            return None
        if words[0] == "help":
            words = [*words[1:], "--help"]
        elif words[0] == "bucketly":  # pasted from a shell script: fine too
            words = words[1:]
        try:
            return self.runner(words, obj=Invocation(shell=self, env=self.env))
        finally:
            self.completer.forget()

    # -- readline -----------------------------------------------------------------------------

    def _setup_readline(self) -> Any:
        try:
            import readline
        except ImportError:  # pragma: no cover - e.g. Windows without pyreadline
            return None
        readline.set_completer(self.completer.complete)
        readline.set_completer_delims(" \t\n\"'=")
        if "libedit" in (readline.__doc__ or ""):  # pragma: no cover - macOS
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
        readline.set_history_length(HISTORY_LENGTH)
        path = history_path(self.env)
        with contextlib.suppress(OSError):  # no history yet
            readline.read_history_file(path)
        return readline

    def _save_history(self, readline: Any) -> None:
        path = history_path(self.env)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError as exc:
            write_error(f"cannot save the shell history to {path}: {exc.strerror or exc}")


class Completer:
    """readline completion: command and option names from the click tree, names from the server.

    Names fetched from the server are cached until the next command runs (which may have
    created or deleted something); a failure to fetch them just means no completions.
    """

    def __init__(self, root: click.Group, shell: Shell) -> None:
        self.root = root
        self.shell = shell
        self._cache: dict[Any, list[str]] = {}
        self._matches: list[str] = []

    def forget(self) -> None:
        self._cache.clear()

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            import readline

            line = readline.get_line_buffer()
            try:
                self._matches = self.candidates(line[: readline.get_begidx()], text)
            except Exception:  # never let completion break the prompt
                self._matches = []
        return self._matches[state] if state < len(self._matches) else None

    def candidates(self, before: str, text: str) -> list[str]:
        """Completions of the word ``text``, preceded on the line by ``before``."""
        try:
            words = shlex.split(before)
        except ValueError:
            words = before.split()
        if words and words[0] == "help":
            words = words[1:]
        command: click.Command = self.root
        ctx = click.Context(self.root, info_name="bucketly")
        while isinstance(command, click.Group) and words:
            sub = command.get_command(ctx, words[0])
            if sub is None:
                break
            command, words = sub, words[1:]
        if isinstance(command, click.Group):
            if words:
                return []
            names = list(command.list_commands(ctx))
            if command is self.root:
                names += BUILTINS
            return [name + " " for name in names if name.startswith(text)]
        options = {opt: param for param in command.params if isinstance(param, click.Option)
                   for opt in (*param.opts, *param.secondary_opts)}
        if text.startswith("-"):
            return sorted(opt + " " for opt in options if opt.startswith(text))
        positionals: list[str] = []
        skip = False
        for word in words:
            if skip:
                skip = False
            elif word.startswith("-"):
                param = options.get(word)
                skip = param is not None and not param.is_flag and "=" not in word
            else:
                positionals.append(word)
        if skip:
            return []  # the value of an option
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if len(positionals) < len(arguments):
            name = arguments[len(positionals)].name
        elif arguments and arguments[-1].nargs == -1:
            name = arguments[-1].name
        else:
            return []
        values = self.values(command.name or "", name or "", positionals)
        return [value + " " for value in values if value.startswith(text)]

    def values(self, command: str, argument: str, positionals: list[str]) -> list[str]:
        if argument == "bucket":
            return self._fetch("buckets", lambda c: [b["name"] for b in c.buckets()])
        if argument == "handler":
            return self._fetch("handlers", lambda c: [h["name"] for h in c.handlers()])
        if argument == "view" and positionals:
            return self._fetch(("views", positionals[0]), lambda c: _views(c, positionals[0]))
        if argument == "args" and command == "view" and len(positionals) >= 2:
            return []
        if argument == "user":
            return self._fetch("users", _user_names)
        if argument == "pattern":
            return ["*", *self.values(command, "bucket", positionals)]
        return []

    def _fetch(self, key: Any, fetch: Callable[[Client], list[str]]) -> list[str]:
        if key not in self._cache:
            try:
                self._cache[key] = sorted(fetch(self.shell.client()))
            except Exception:
                self._cache[key] = []
        return self._cache[key]


def _views(client: Client, bucket: str) -> list[str]:
    handler = client.bucket_info(bucket).get("handler")
    for info in client.handlers():
        if info.get("name") == handler:
            return list(info.get("views") or [])
    return []


def _user_names(client: Client) -> list[str]:
    return [str(u.get("user") or u.get("name")) if isinstance(u, dict) else str(u)
            for u in client.users()]
