"""``bucketly``: the command-line client. One subcommand per op, and an interactive shell.

``main()`` is the console script. ``run(argv)`` runs one command line and returns its exit status
instead of exiting; the interactive shell calls it for every line. Every error is reported as one
line on stderr (``--verbose`` adds the traceback) and mapped to the exit status docs/cli.md
lists: the ``exit_code`` of the error class, 2 for usage errors, 130 for Ctrl-C.

Connection and output options are added to every command by ``BucketlyCommand`` (see
``bucketly.cli.invocation``); results are printed through ``bucketly.cli.output.Output``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from .. import __version__
from ..client.common import DEFAULT_BATCH_SIZE
from ..errors import BucketlyError
from . import output as out
from .invocation import (
    CommonOption,
    Invocation,
    common_option_names,
    common_params,
    main_thread_signals,
    prompt_secret,
    read_secret_from_stdin,
    remind_default_password,
)
from .output import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, CliError, to_json

__all__ = ["OP_COMMANDS", "cli", "main", "run"]

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



#: The command for each op of ``bucketly.protocol.OPS`` (tests/test_cli_docs.py checks that
#: every op has one, and docs/cli.md lists them). ``hello`` and ``auth`` happen on connecting.
OP_COMMANDS: dict[str, str] = {
    "hello": "(none: the client checks the greeting the server sends first)",
    "auth": "(every command with a user, on connecting)",
    "ping": "ping",
    "send": "send",
    "view": "view",
    "dump": "dump",
    "create_bucket": "bucket create",
    "list_buckets": "bucket list",
    "bucket_info": "bucket info",
    "configure_bucket": "bucket configure",
    "delete_bucket": "bucket delete",
    "list_handlers": "handlers",
    "whoami": "whoami",
    "change_password": "passwd",
    "stats": "stats",
    "create_user": "user add",
    "delete_user": "user delete",
    "list_users": "user list",
    "set_password": "user passwd",
    "grant": "grant",
    "revoke": "revoke",
    "permissions": "permissions",
    "create_token": "tokens create",
    "list_tokens": "tokens list",
    "revoke_token": "tokens revoke",
    "audit": "audit",
}


# -- command classes -----------------------------------------------------------------------------


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
            raise _BrokenPipe() from None


class _BrokenPipe(Exception):
    """The reader of our output went away (``bucketly dump b | head``)."""


def _invocation() -> Invocation:
    return click.get_current_context().ensure_object(Invocation)


# -- the root ------------------------------------------------------------------------------------


@click.group(cls=BucketlyGroup, invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="bucketly")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The bucketly command-line client: send events, query views, manage a bucketlyd server.

    Run a COMMAND, or run 'bucketly' alone for an interactive shell with history and tab
    completion. Connection settings come from the options below, the BUCKETLY_* environment
    variables, and profiles in the config file, in that order. Results are tables on a terminal
    and exact JSON when piped ('bucketly bucket list | jq .'). See docs/cli.md.
    """
    invocation = ctx.ensure_object(Invocation)
    ctx.call_on_close(invocation.close)
    if ctx.invoked_subcommand is None and invocation.shell is None:
        _run_shell(invocation)


def _run_shell(invocation: Invocation) -> None:
    from .shell import Shell

    status = Shell(cli, run, invocation).run()
    if status:
        raise click.exceptions.Exit(status)


# -- events and views ----------------------------------------------------------------------------


@cli.command()
def ping() -> None:
    """Check that the server answers (and that you can log in, if a user is set)."""
    invocation = _invocation()
    client = invocation.client()
    remind_default_password(client, invocation.output())
    started = time.perf_counter()
    reply = client.ping()
    elapsed = time.perf_counter() - started
    address = f"{client.host}:{client.port}"
    invocation.output().message(
        f"{reply} from {address} in {elapsed * 1000:.2f} ms",
        {"reply": reply, "server": address, "round_trip_ms": round(elapsed * 1000, 3)},
    )


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{what} is not valid JSON ({exc.msg} at column {exc.colno}); quote it for the "
            """shell, e.g. '{"user": "u1"}' or '"text"'""", EXIT_USAGE,
        ) from None


class _Counter:
    """Events queued so far; read by the progress bar's refresh thread, so always current."""

    count = 0


class _EventRate(ProgressColumn):
    def __init__(self, counter: _Counter) -> None:
        super().__init__()
        self.counter = counter

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        events = self.counter.count
        rate = events / elapsed if elapsed > 0.2 else None
        return Text(f"{events:,} events  {out.format_rate(rate)}")


def _event_lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(line number, bytes so far, event)`` for each non-blank line of JSON lines."""
    position = 0
    for number, line in enumerate(stream, 1):
        position += len(line)
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise _BadLine(f"line {number} of {name} is not valid JSON ({reason})") from None
        yield number, position, event


class _BadLine(Exception):
    pass


@cli.command()
@click.argument("bucket")
@click.argument("event", required=False)
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read the events from FILE ('-': standard input), one JSON value per line.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=DEFAULT_BATCH_SIZE,
              show_default=True, metavar="N", help="Events per batch sent to the server.")
@click.option("--progress/--no-progress", default=None,
              help="Show the count and rate of events sent. Default: when stderr is a terminal.")
def send(bucket: str, event: str | None, path: str | None, batch_size: int,
         progress: bool | None) -> None:
    """Send events to BUCKET.

    EVENT is one event, as JSON: bucketly send clicks '{"url": "/a", "user": "u1"}'. Without
    EVENT, events are read from standard input (or --file), one JSON value per line (JSON lines;
    blank lines are skipped), and sent in batches. The command returns once the server has
    acknowledged every event. A line that is not JSON stops it: the events before that line
    are sent, the rest are not. Put -- before an EVENT that starts with '-': send b -- -5
    """
    invocation = _invocation()
    output = invocation.output()
    if event is not None and path is not None:
        raise click.UsageError("give EVENT or --file, not both")
    if event is not None:
        value = _parse_json(event, "EVENT")
        client = invocation.client()
        with main_thread_signals():  # the first send may start the client's linger thread
            client.send(bucket, value)
        client.flush()
        output.message(f"sent 1 event to {bucket}", {"bucket": bucket, "sent": 1})
        return
    if path is None or path == "-":
        if sys.stdin is None:
            raise CliError("no standard input to read events from", EXIT_USAGE)
        stream, name, size, opened = sys.stdin.buffer, "standard input", None, False
        if sys.stdin.isatty():
            output.note("reading events from the terminal, one JSON value per line; "
                        "end with Ctrl-D")
    else:
        try:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None
        name, size, opened = path, _file_size(stream), True
    try:
        _send_stream(invocation, bucket, stream, name, size, batch_size, progress)
    finally:
        if opened:
            stream.close()


def _send_stream(invocation: Invocation, bucket: str, stream: IO[bytes], name: str,
                 size: int | None, batch_size: int, progress: bool | None) -> None:
    output = invocation.output()
    client = invocation.client()
    saved_batch_size, client.batch_size = client.batch_size, batch_size
    show = output.interactive if progress is None else progress
    counter = _Counter()
    columns: list[str | ProgressColumn] = [SpinnerColumn(),
                                           TextColumn("sending to {task.description}")]
    if size is not None:
        columns.append(BarColumn())  # how far into the file
    columns += [_EventRate(counter), TimeElapsedColumn()]
    progress_bar = Progress(*columns, console=output.err_console, transient=True,
                            disable=not show)
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            with main_thread_signals():  # rich's refresh thread must not take Ctrl-C
                stack.enter_context(progress_bar)
            task = progress_bar.add_task(bucket, total=size)
            next_update = 0.0
            try:
                for _, position, value in _event_lines(stream, name):
                    if counter.count:
                        client.send(bucket, value)
                    else:
                        with main_thread_signals():  # it may start the client's linger thread
                            client.send(bucket, value)
                    counter.count += 1
                    if size is not None and (now := time.monotonic()) >= next_update:
                        progress_bar.update(task, completed=position)
                        next_update = now + 0.1
            except _BadLine as exc:
                client.flush()
                raise CliError(
                    f"{exc}; the {counter.count:,} events before it were sent", EXIT_USAGE
                ) from None
            client.flush()
    finally:
        client.batch_size = saved_batch_size
    count = counter.count
    elapsed = time.monotonic() - started
    rate = f" ({out.format_rate(count / elapsed)})" if elapsed > 0.5 else ""
    output.message(
        f"sent {count:,} events to {bucket} in {out.format_duration(elapsed)}{rate}",
        {"bucket": bucket, "sent": count},
    )


def _file_size(stream: IO[bytes]) -> int | None:
    try:
        size = os.fstat(stream.fileno()).st_size
    except (OSError, ValueError):
        return None
    return size or None


def _parse_view_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"view arguments are KEY=VALUE, not {pair!r}")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw
    return args


@cli.command()
@click.argument("bucket")
@click.argument("view")
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
def view(bucket: str, view: str, args: tuple[str, ...]) -> None:
    """Call the view VIEW of BUCKET and print its result.

    Arguments are KEY=VALUE; a VALUE that is valid JSON is passed as that JSON (n=5 is the
    number 5, flag=true a boolean, url='"/a"' the string "/a"), anything else as a string
    (url=/a). Example: bucketly view clicks top n=3
    """
    invocation = _invocation()
    result = invocation.client().view(bucket, view, **_parse_view_args(args))
    invocation.output().result(result)


@cli.command()
@click.argument("bucket")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the dump to FILE as JSON (replaced only once complete), with progress "
                   "on a terminal.")
def dump(bucket: str, path: str | None) -> None:
    """Print the whole state of BUCKET (its handler's dump()), or write it to a file."""
    invocation = _invocation()
    output = invocation.output()
    client = invocation.client()
    if path is None or path == "-":
        with _spinner(output, f"dumping {bucket}"):
            state = client.dump(bucket)
        output.result(state)
        return
    with _spinner(output, f"dumping {bucket}"):
        state = client.dump(bucket)
    written, entries = _write_json_file(Path(path), state, output, bucket)
    output.message(
        f"wrote the dump of {bucket} to {path} ({entries:,} entries, {_size(written)})",
        {"bucket": bucket, "path": str(path), "bytes": written, "entries": entries},
    )


class _spinner:
    """A spinner on stderr while waiting for the server (only on a terminal)."""

    def __init__(self, output: out.Output, text: str) -> None:
        self.status = output.err_console.status(text) if output.interactive else None

    def __enter__(self) -> None:
        if self.status is not None:
            with main_thread_signals():
                self.status.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)


def _size(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _json_pieces(value: Any) -> tuple[int, Iterator[str]]:
    """``value`` as compact JSON in pieces, one per top-level entry: ``(entries, pieces)``.

    The pieces join to exactly ``to_json(value)``; one per entry lets a progress bar move.
    """
    if isinstance(value, dict) and value:
        safe = out.to_jsonable(value)

        def items() -> Iterator[str]:
            for index, (key, item) in enumerate(safe.items()):
                yield ("{" if index == 0 else ",") + to_json(key) + ":" + to_json(item)
            yield "}"

        return len(safe), items()
    if isinstance(value, list) and value:
        def elements() -> Iterator[str]:
            for index, item in enumerate(value):
                yield ("[" if index == 0 else ",") + to_json(item)
            yield "]"

        return len(value), elements()
    return 1, iter([to_json(value)])


def _write_json_file(path: Path, value: Any, output: out.Output, bucket: str) -> tuple[int, int]:
    entries, pieces = _json_pieces(value)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise CliError(f"cannot write to {directory}: {exc.strerror or exc}", EXIT_USAGE) from None
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it; mkstemp makes it private
    written = 0
    progress = Progress(
        SpinnerColumn(), TextColumn(f"writing {bucket} to {path}"), BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} entries"), TimeElapsedColumn(),
        console=output.err_console, transient=True, disable=not output.interactive,
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file, contextlib.ExitStack() as stack:
            with main_thread_signals():
                stack.enter_context(progress)
            task = progress.add_task("dump", total=entries)
            for number, piece in enumerate(pieces, 1):
                file.write(piece)
                written += len(piece.encode("utf-8"))
                if number % 256 == 0:
                    progress.update(task, completed=min(number, entries))
            file.write("\n")
            written += 1
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CliError(f"cannot write {path}: {exc.strerror or exc}", EXIT_USAGE) from None
        raise
    return written, entries


# -- buckets -------------------------------------------------------------------------------------


@cli.group()
def bucket() -> None:
    """Create, list, describe and delete buckets."""


@bucket.command("create")
@click.argument("bucket")
@click.argument("handler")
@click.option("--config", "config_json", metavar="JSON",
              help="""The handler's configuration, a JSON object: --config '{"key": "url"}'.""")
@click.option("--durable", is_flag=True,
              help="Keep acknowledged events through crashes (written to the database first).")
def bucket_create(bucket: str, handler: str, config_json: str | None, durable: bool) -> None:
    """Create BUCKET, aggregating with HANDLER (a class of the server's handlers module).

    See the handlers with 'bucketly handlers'.
    """
    config = None
    if config_json is not None:
        config = _parse_json(config_json, "--config")
        if not isinstance(config, dict):
            raise CliError("--config must be a JSON object, like '{\"key\": \"url\"}'", EXIT_USAGE)
    invocation = _invocation()
    info = invocation.client().create_bucket(bucket, handler, config, durable)
    invocation.output().message(
        f"created bucket {bucket} (handler {handler}{', durable' if durable else ''})", info
    )


@bucket.command("list")
def bucket_list() -> None:
    """List the buckets you hold any permission on."""
    invocation = _invocation()
    invocation.output().result(invocation.client().buckets(), out.render_buckets)


@bucket.command("info")
@click.argument("bucket")
def bucket_info(bucket: str) -> None:
    """Describe BUCKET: handler, configuration, events, and its scheduled jobs."""
    invocation = _invocation()
    invocation.output().result(invocation.client().bucket_info(bucket), out.render_bucket_info)


@bucket.command("configure")
@click.argument("bucket")
@click.option("--durable/--not-durable", default=None,
              help="Keep acknowledged events through crashes, or stop doing so.")
def bucket_configure(bucket: str, durable: bool | None) -> None:
    """Change the settings of BUCKET."""
    if durable is None:
        raise click.UsageError("nothing to change: give --durable or --not-durable")
    invocation = _invocation()
    info = invocation.client().configure_bucket(bucket, durable=durable)
    invocation.output().message(
        f"bucket {bucket} is {'now' if durable else 'no longer'} durable", info
    )


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise CliError(f"{question} Refusing to without --yes when not on a terminal",
                       EXIT_USAGE)
    if not click.confirm(question, default=False, err=True):
        raise CliError("cancelled; nothing was done", EXIT_CANCELLED)


_YES = click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")


@bucket.command("delete")
@click.argument("bucket")
@_YES
def bucket_delete(bucket: str, yes: bool) -> None:
    """Delete BUCKET: its definition and all its state. There is no undo."""
    _confirm(f"Delete bucket {bucket!r} and all its state?", yes)
    invocation = _invocation()
    invocation.client().delete_bucket(bucket)
    invocation.output().message(f"deleted bucket {bucket}", {"bucket": bucket, "deleted": True})


@cli.command()
def handlers() -> None:
    """List the handlers the server's handlers module defines, with their views and jobs."""
    invocation = _invocation()
    invocation.output().result(invocation.client().handlers(), out.render_handlers)


# -- users and permissions -----------------------------------------------------------------------


def _new_password(from_stdin: bool, whose: str) -> str:
    if from_stdin:
        return read_secret_from_stdin("password")
    return prompt_secret(
        f"New password for {whose}: ", confirm=True,
        missing="no terminal to ask for the new password on: use --stdin and write it to "
                "standard input",
    )


_STDIN = click.option("--stdin", "from_stdin", is_flag=True,
                      help="Read the new password from the first line of standard input "
                           "instead of asking for it.")


@click.command(cls=BucketlyCommand)
@click.argument("user", required=False)
@_STDIN
def passwd(user: str | None, from_stdin: bool) -> None:
    """Change your own password, or (with USER, as an administrator) another user's."""
    invocation = _invocation()
    client = invocation.client()
    own = user is None or user == client.user
    if own:
        if client.user is None:
            raise CliError("not logged in: give the user with --user or BUCKETLY_USER", 3)
        password = _new_password(from_stdin, client.user)
        client.change_password(invocation.login_password() or "", password)
        invocation.password_changed(password)
        invocation.output().message(f"changed the password of {client.user}",
                                    {"user": client.user, "changed": True})
        return
    assert user is not None
    password = _new_password(from_stdin, user)
    invocation.client().set_password(user, password)
    invocation.output().message(f"changed the password of {user}", {"user": user,
                                                                   "changed": True})


cli.add_command(passwd)


@cli.group()
def user() -> None:
    """Manage users (as an administrator)."""


@user.command("add")
@click.argument("user")
@_STDIN
def user_add(user: str, from_stdin: bool) -> None:
    """Create USER, asking for their password. Grant them permissions with 'bucketly grant'."""
    invocation = _invocation()
    password = _new_password(from_stdin, user)
    invocation.client().create_user(user, password)
    invocation.output().message(f"created user {user}", {"user": user, "created": True})


@user.command("delete")
@click.argument("user")
@_YES
def user_delete(user: str, yes: bool) -> None:
    """Delete USER and their permissions and tokens."""
    _confirm(f"Delete user {user!r}?", yes)
    invocation = _invocation()
    invocation.client().delete_user(user)
    invocation.output().message(f"deleted user {user}", {"user": user, "deleted": True})


@user.command("list")
def user_list() -> None:
    """List the users."""
    invocation = _invocation()
    invocation.output().result(invocation.client().users())


user.add_command(passwd)


def _permissions_epilog() -> str | None:
    """The permissions the protocol defines, for 'grant --help' (from the one list of them)."""
    from ..protocol import ops

    permissions = getattr(ops, "PERMISSIONS", None)
    if not permissions:
        return None
    width = max(len(name) for name in permissions) + 2
    lines = ["\b", "Permissions (* is all of them):"]
    for name, permission in permissions.items():
        scope = "bucket" if getattr(permission, "kind", "") == "bucket" else "server"
        text = textwrap.wrap(f"{scope}: {getattr(permission, 'doc', '')}",
                             HELP_WIDTH - 6 - width)
        lines.append(f"  {name:<{width}}{text[0]}")
        lines += [" " * (width + 2) + more for more in text[1:]]
    return "\n".join(lines)


@cli.command(epilog=_permissions_epilog())
@click.argument("user")
@click.argument("permission")
@click.argument("pattern", default="*")
def grant(user: str, permission: str, pattern: str) -> None:
    """Grant USER a PERMISSION on the buckets matching PATTERN (a glob; default '*': all).

    Server-wide permissions take the PATTERN '*' only. Example: bucketly grant alice view
    'clicks.*'
    """
    invocation = _invocation()
    invocation.client().grant(user, permission, pattern)
    invocation.output().message(
        f"granted {permission} on {pattern} to {user}",
        {"user": user, "permission": permission, "pattern": pattern, "granted": True},
    )


@cli.command()
@click.argument("user")
@click.argument("permission")
@click.argument("pattern", default="*")
def revoke(user: str, permission: str, pattern: str) -> None:
    """Revoke a PERMISSION on PATTERN (default '*') that USER was granted."""
    invocation = _invocation()
    invocation.client().revoke(user, permission, pattern)
    invocation.output().message(
        f"revoked {permission} on {pattern} from {user}",
        {"user": user, "permission": permission, "pattern": pattern, "revoked": True},
    )


@cli.command()
@click.argument("user", required=False)
def permissions(user: str | None) -> None:
    """List the permissions of USER (default: yours)."""
    invocation = _invocation()
    if user is None:
        result = invocation.client().whoami().get("permissions", [])
    else:
        result = invocation.client().permissions(user)
    invocation.output().result(result, out.render_permissions)


@cli.group(invoke_without_command=True)
@click.pass_context
def tokens(ctx: click.Context) -> None:
    """Manage your API tokens; alone, the same as 'tokens list'."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(tokens_list)


@tokens.command("create")
@click.option("--name", help="A name to recognise the token by.")
def tokens_create(name: str | None) -> None:
    """Create a token, and print it: it is shown only this once."""
    invocation = _invocation()
    result = invocation.client().create_token(name=name)
    output = invocation.output()
    if output.json:
        output.emit_json(result)
        return
    output.console.print(Text(str(result.get("token")), style="bold"))
    output.note(f"token id {result.get('id')}: store the token now, it is not shown again")


@tokens.command("list")
@click.option("--owner", metavar="USER",
              help="List the tokens of another user (as an administrator).")
def tokens_list(owner: str | None = None) -> None:
    """List your tokens (their ids and names, never the tokens)."""
    invocation = _invocation()
    kwargs = {"user": owner} if owner is not None else {}
    invocation.output().result(invocation.client().tokens(**kwargs),
                               out.render_tokens)


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
def tokens_revoke(token_id: str) -> None:
    """Revoke the token ID (as 'tokens list' shows it)."""
    invocation = _invocation()
    # Not a number: passed on as it is, for the server to refuse (bad_argument, exit 2).
    ident: Any = int(token_id) if token_id.isdigit() else token_id
    invocation.client().revoke_token(ident)
    invocation.output().message(f"revoked token {token_id}", {"id": ident, "revoked": True})


# -- the server ----------------------------------------------------------------------------------


@cli.command()
def whoami() -> None:
    """Show who you are logged in as, and your permissions."""
    invocation = _invocation()
    invocation.output().result(invocation.client().whoami(), out.render_whoami)


@cli.command()
@click.option("-n", "--limit", type=click.IntRange(min=1), metavar="N",
              help="Show the N most recent entries (default: the server's).")
def audit(limit: int | None) -> None:
    """Show the audit log: logins, and changes to users, permissions and buckets."""
    invocation = _invocation()
    kwargs = {"limit": limit} if limit is not None else {}
    invocation.output().result(invocation.client().audit(**kwargs))


@cli.command()
@click.option("-w", "--watch", is_flag=True,
              help="Refresh in place, like top: events/s overall and per bucket, jobs. Ctrl-C "
                   "quits. Piped, prints one JSON line per refresh.")
@click.option("-n", "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between refreshes with --watch.")
@click.option("-c", "--count", type=click.IntRange(min=1), metavar="N",
              help="With --watch, stop after N refreshes.")
def stats(watch: bool, interval: float, count: int | None) -> None:
    """Show server statistics: connections, events, buckets, scheduled jobs."""
    invocation = _invocation()
    output = invocation.output()
    client = invocation.client()
    if not watch:
        output.result(client.stats(), out.render_stats)
        return
    try:
        if output.json:
            _watch_json(client, interval, count)
        else:
            _watch_live(client, output, interval, count)
    except KeyboardInterrupt:
        pass  # the way to leave --watch: not an error


def _ticks(interval: float, count: int | None) -> Iterator[int]:
    """Yield 0, 1, ... every ``interval`` seconds (without drift), ``count`` times at most."""
    started = time.monotonic()
    tick = 0
    while count is None or tick < count:
        yield tick
        tick += 1
        if count is not None and tick >= count:
            return
        delay = started + tick * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _watch_json(client: Any, interval: float, count: int | None) -> None:
    for _ in _ticks(interval, count):
        click.echo(to_json(client.stats()))
        sys.stdout.flush()


def _watch_live(client: Any, output: out.Output, interval: float, count: int | None) -> None:
    previous: dict[str, Any] | None = None
    previous_at = 0.0
    with Live(console=output.console, auto_refresh=False, transient=False) as live:
        for _ in _ticks(interval, count):
            current = client.stats()
            now = time.monotonic()
            rates: dict[str, float] = {}
            total_rate = None
            if previous is not None and now > previous_at:
                elapsed = now - previous_at
                total_rate = max(0.0, (current.get("events", 0) - previous.get("events", 0))
                                 / elapsed)
                before = previous.get("buckets") or {}
                for name, info in (current.get("buckets") or {}).items():
                    if name in before and info.get("events", 0) >= before[name].get("events", 0):
                        rates[name] = (info["events"] - before[name]["events"]) / elapsed
            previous, previous_at = current, now
            footer = Text(f"every {out.format_duration(interval)}, Ctrl-C to quit", style="dim")
            from rich.console import Group

            live.update(Group(out.render_stats(current, rates, total_rate), footer),
                        refresh=True)


@cli.command()
def shell() -> None:
    """Start the interactive shell (the same as 'bucketly' with no command).

    Every command works in it without the 'bucketly' prefix, over one connection. Tab completes
    commands, options, bucket, handler and view names; history is kept in
    ~/.local/state/bucketly/history (env BUCKETLY_HISTORY). 'help [COMMAND]' shows help, 'exit'
    or Ctrl-D leaves. With standard input not a terminal, it runs the commands it reads there.
    """
    invocation = _invocation()
    if invocation.shell is not None:
        raise CliError("already in the shell", EXIT_USAGE)
    _run_shell(invocation)


# -- running -------------------------------------------------------------------------------------


def run(argv: list[str] | None = None, *, obj: Invocation | None = None) -> int:
    """Run one ``bucketly`` command line; return its exit status (never raises for errors)."""
    invocation = obj if obj is not None else Invocation()
    try:
        result = cli.main(args=argv, prog_name="bucketly", standalone_mode=False, obj=invocation)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:  # click's form of Ctrl-C (or of EOF at a prompt)
        out.write_error("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        out.write_error(exc.message)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except BucketlyError as exc:
        out.write_error(out.describe_error(exc))
        if invocation.verbose:
            if exc.detail is not None:
                click.echo(f"detail: {to_json(exc.detail)}", err=True)
            traceback.print_exception(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("", err=True)
        out.write_error("interrupted")
        return EXIT_INTERRUPTED
    except (_BrokenPipe, BrokenPipeError):
        # Stop quietly, and keep Python from complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        out.write_error(f"unexpected error in the bucketly CLI: {type(exc).__name__}: {exc} "
                        "(please report it; --verbose shows the traceback)")
        if invocation.verbose:
            traceback.print_exception(exc)
        return EXIT_CLI_BUG
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """The ``bucketly`` console script."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
