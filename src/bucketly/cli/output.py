"""What the ``bucketly`` client prints: exact JSON for scripts, rich tables for people.

``Output`` decides once per command: JSON when ``--json`` is given or stdout is not a terminal
(so ``bucketly ... | jq`` just works), human-readable rich output otherwise (``--table`` forces
it). Progress bars and spinners go to stderr, and only when stderr is a terminal, so they never
mix with data. Errors are one line on stderr; ``describe_error`` adds what to do about them.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

import click
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.highlighter import JSONHighlighter
from rich.table import Table
from rich.text import Text

from .. import errors

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Output",
    "describe_error",
    "to_json",
    "to_jsonable",
]

EXIT_OK = 0
#: click's own code for a usage error; bad input (an event that is not JSON) gets it too.
EXIT_USAGE = 2
#: 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: the reader of our output went away (``bucketly dump b | head``).
EXIT_BROKEN_PIPE = 141


class CliError(click.ClickException):
    """A failure found by the CLI itself (bad input, missing password, unsupported feature).

    Shown as one line, like the server's errors; ``exit_code`` follows docs/cli.md.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it on the class


# -- JSON ----------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """``value`` (anything MessagePack decodes to) as plain JSON types.

    Binary strings become ``{"$base64": "..."}``; map keys that are not strings become their
    JSON text (``1`` -> ``"1"``, as ``json.dumps`` does for numbers).
    """
    if isinstance(value, dict):
        return {_json_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "backslashreplace")
    return json.dumps(to_jsonable(key), ensure_ascii=False, separators=(",", ":"))


def to_json(value: Any, *, indent: int | None = None) -> str:
    """One JSON document for ``value``; compact unless ``indent`` is given."""
    separators = (",", ": ") if indent else (",", ":")
    try:
        return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    except (TypeError, ValueError):
        return json.dumps(
            to_jsonable(value), ensure_ascii=False, indent=indent, separators=separators
        )


# -- errors --------------------------------------------------------------------------------------

#: What to do about each error, appended to the server's message (the first match wins).
_HINTS: list[tuple[type[BaseException], str]] = [
    (errors.ConnectionLost, "check that bucketlyd is still running"),
    (errors.BucketlyConnectionError, "is bucketlyd running there? set the address with "
                                     "--host/--port or BUCKETLY_HOST/BUCKETLY_PORT"),
    (errors.AuthRequired, "log in with --user or BUCKETLY_USER"),
    (errors.TooManyAttempts, "too many failed logins: wait, then try again"),
    (errors.UnknownUser, "see the users with: bucketly user list"),
    (errors.UserExists, "choose another name"),
    (errors.LimitExceeded, "the connection exceeded one of the server's limits; see its log"),
    (errors.AuthFailed, "check the user (--user or BUCKETLY_USER) and the password "
                        "(BUCKETLY_PASSWORD or the prompt)"),
    (errors.PermissionDenied, "ask an administrator for the permission (bucketly grant)"),
    (errors.UnknownBucket, "see the buckets with: bucketly bucket list"),
    (errors.BucketExists, "choose another name, or delete the bucket first"),
    (errors.UnknownView, "see each handler's views with: bucketly handlers"),
    (errors.UnknownOp, "the server does not support this yet: upgrade bucketlyd"),
    (errors.ConnectionRefusedByServer, "the server is at its connection limit; try again later"),
    (errors.ShuttingDown, "the server is stopping; try again once it is back"),
    (errors.StorageError, "the server could not write its database; see its log"),
    (errors.InternalError, "this is a bug in bucketlyd; its log has the details"),
    (errors.ProtocolError, "is this a bucketlyd of the same version at that address?"),
]


def describe_error(exc: BaseException) -> str:
    """One line: what failed, and (for known errors) what to do about it."""
    message = str(exc) or type(exc).__name__
    message = " ".join(message.split())  # one line, whatever the server sent
    for cls, hint in _HINTS:
        if isinstance(exc, cls):
            if getattr(exc, "unacknowledged", None):
                hint += "; the unacknowledged events may or may not have been applied"
            return f"{message}; {hint}"
    return message


# -- output --------------------------------------------------------------------------------------


class Output:
    """Prints results for one command: JSON or rich, decided from the flags and the terminal."""

    def __init__(self, json_mode: bool | None = None, verbose: bool = False) -> None:
        self.stdout_tty = _isatty(sys.stdout)
        self.stderr_tty = _isatty(sys.stderr)
        #: ``True``: JSON; ``False``: human output. ``None`` (no flag): JSON unless a terminal.
        self.json = (not self.stdout_tty) if json_mode is None else json_mode
        self.verbose = verbose
        self.console = Console(highlight=False, soft_wrap=False)
        self.err_console = Console(stderr=True, highlight=False)

    @property
    def interactive(self) -> bool:
        """Whether progress bars and spinners may be shown (on stderr)."""
        return self.stderr_tty

    def emit_json(self, value: Any) -> None:
        text = to_json(value, indent=2 if self.stdout_tty else None)
        click.echo(text)

    def result(self, value: Any, render: Callable[[Any], RenderableType | None] | None = None,
               ) -> None:
        """Print a command's result: ``value`` as JSON, or ``render(value)`` for people."""
        if self.json:
            self.emit_json(value)
            return
        renderable = render(value) if render is not None else render_value(value)
        if isinstance(renderable, JsonText) and renderable.large:
            # Laying out megabytes of text in rich takes minutes: print it plainly.
            click.echo(to_json(renderable.value, indent=2))
            self.note("a large result: 'dump -o FILE' writes it to a file, with progress")
        elif renderable is not None:
            self.console.print(renderable)

    def message(self, text: str, value: Any = None) -> None:
        """A confirmation ("created bucket x"): JSON ``value`` in JSON mode, else ``text``."""
        if self.json:
            self.emit_json(value)
        else:
            self.console.print(Text(text))

    def note(self, text: str) -> None:
        """A remark for people (stderr, only on a terminal)."""
        if self.stderr_tty:
            self.err_console.print(Text(text, style="yellow"))


def _isatty(stream: IO[Any] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (ValueError, AttributeError):
        return False


# -- renderers: one per kind of result -----------------------------------------------------------


def render_value(value: Any) -> RenderableType:
    """Any view result: a scalar as is, rows as a table, anything else as pretty JSON."""
    if isinstance(value, str):
        return Text(value)
    if value is None or isinstance(value, bool | int | float):
        return Text(to_json(value))
    as_json = JsonText(value)
    if as_json.large:
        return as_json
    if isinstance(value, dict) and value and all(_is_scalar(v) for v in value.values()):
        table = _table("key", "value")
        for key, item in value.items():
            table.add_row(_cell(key), _field(str(key), item))
        return table
    if (isinstance(value, list) and value
            and all(isinstance(row, list) and all(_is_scalar(c) for c in row) for row in value)):
        width = max(len(row) for row in value)
        table = _table(*(f"#{i + 1}" for i in range(width)), show_header=False)
        for row in value:
            table.add_row(*(_cell(c) for c in row))
        return table
    if isinstance(value, list) and value and all(
            isinstance(row, dict) and all(_is_scalar(v) for v in row.values()) for row in value):
        columns = list(dict.fromkeys(key for row in value for key in row))
        table = _table(*columns)
        for row in value:
            table.add_row(*(_field(str(c), row.get(c, "")) for c in columns))
        return table
    return as_json


class JsonText:
    """``value`` as highlighted JSON for people: each array or object on one line when it fits
    the terminal, spread over lines (indented by 2) when it does not."""

    def __init__(self, value: Any) -> None:
        self.value = to_jsonable(value)
        self.large = len(to_json(self.value)) > LARGE_RESULT

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        text = Text(_fit_json(self.value, 0, max(options.max_width, 40)))
        JSONHighlighter().highlight(text)
        yield text


def _fit_json(value: Any, indent: int, width: int) -> str:
    compact = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if indent + len(compact) <= width or not isinstance(value, dict | list) or not value:
        return compact
    inner = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key, ensure_ascii=False)}: "
                 + _fit_json(item, indent + 2, width) for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [inner + _fit_json(item, indent + 2, width) for item in value]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


#: Size, in characters of JSON, above which a result is printed without layout or colours.
LARGE_RESULT = 256 * 1024


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _field(name: str, value: Any) -> str:
    """A cell of a named field: timestamps (``at``, ``created_at`` ...) as local times."""
    if (name == "at" or name.endswith("_at")) and isinstance(value, int | float) and (
            not isinstance(value, bool)):
        return format_time(value)
    return _cell(value)


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return to_json(value)


def _table(*columns: str, show_header: bool = True, title: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_header=show_header, show_edge=False, title=title,
                  title_justify="left", pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def format_time(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def format_ago(timestamp: float | None, now: float | None = None) -> str:
    if not timestamp:
        return "never"
    return format_duration((now or time.time()) - timestamp) + " ago"


def format_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate >= 10_000:
        return f"{rate / 1000:,.0f}k/s"
    return f"{rate:,.1f}/s"


def render_buckets(buckets: list[dict[str, Any]]) -> RenderableType:
    if not buckets:
        return Text("no buckets (create one with: bucketly bucket create NAME HANDLER)")
    table = _table("name", "handler", "events", "persistence", "created", "config")
    for info in buckets:
        name = info.get("name", "")
        if info.get("broken"):
            name += " (broken)"
        table.add_row(
            name, str(info.get("handler", "")), f"{info.get('events', 0):,}",
            _persistence(info), format_time(info.get("created_at")),
            to_json(info.get("config") or {}),
        )
    return table


def render_bucket_info(info: dict[str, Any]) -> RenderableType:
    table = _table("", "", show_header=False)
    shown_first = ("name", "handler", "persistence", "events", "created_at", "config", "broken")
    for key in shown_first:
        if key not in info:
            continue
        value = info[key]
        if key == "created_at":
            shown = format_time(value)
        elif key == "events":
            shown = f"{value:,}"
        elif key == "persistence":
            shown = _persistence(info)
        else:
            shown = _cell(value)
        table.add_row(key, shown)
    snapshots = info.get("snapshots")
    if snapshots:
        age = snapshots.get("age_seconds")
        table.add_row(
            "last snapshot",
            "none yet" if age is None else
            f"{format_duration(age)} ago ({snapshots.get('bytes', 0):,} bytes, every "
            f"{format_duration(snapshots.get('interval_seconds', 0))})"
            + (f"; failing: {snapshots['error']}" if snapshots.get("error") else ""),
        )
    for key, value in info.items():
        if key not in (*shown_first, "durable", "jobs", "snapshots"):
            table.add_row(key, _cell(value))
    jobs = info.get("jobs") or {}
    if not jobs:
        return table
    return Group(table, render_jobs({info.get("name", ""): jobs}, title="scheduled jobs"))


def render_jobs(jobs_by_bucket: dict[str, dict[str, dict[str, Any]]],
                title: str | None = None, now: float | None = None) -> RenderableType:
    table = _table("bucket", "job", "every", "runs", "failures", "state", "last success",
                   "took", title=title)
    table.add_column("last error", no_wrap=True, overflow="ellipsis", max_width=60)
    for bucket, jobs in jobs_by_bucket.items():
        for name, job in jobs.items():
            if job.get("running"):
                state = "running"
            elif job.get("consecutive_failures"):
                state = f"failing ({job['consecutive_failures']}x)"
            else:
                state = "ok"
            table.add_row(
                bucket, name, format_duration(job.get("interval")), str(job.get("runs", 0)),
                str(job.get("failures", 0)), state, format_ago(job.get("last_success_at"), now),
                format_duration(job.get("last_duration")),
                str(job.get("last_error") or "").strip().split("\n")[0],
            )
    return table


def render_handlers(handlers: list[dict[str, Any]]) -> RenderableType:
    table = _table("handler", "views", "jobs", "description")
    for info in handlers:
        jobs = info.get("jobs") or {}
        table.add_row(
            info.get("name", ""), ", ".join(info.get("views") or []) or "-",
            ", ".join(f"{name} ({format_duration(s)})" for name, s in jobs.items()) or "-",
            (info.get("doc") or "").split("\n\n")[0].replace("\n", " "),
        )
    return table


def render_module(info: dict[str, Any]) -> RenderableType:
    table = _table("", "")
    for key in ("spec", "path", "sha256", "mtime", "loaded_at", "reloads"):
        value = info.get(key)
        if key in ("mtime", "loaded_at") and isinstance(value, (int, float)):
            value = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
        table.add_row(key, "-" if value is None else str(value))
    table.add_row("handlers", ", ".join(info.get("handlers") or []) or "-")
    return table


def render_reload(result: dict[str, Any]) -> RenderableType:
    module = result.get("module") or {}
    head = Text(
        f"reloaded {module.get('path') or module.get('spec')} "
        f"(sha256 {str(module.get('sha256'))[:12]}) in "
        f"{1000 * float(result.get('paused_seconds') or 0):.1f} ms"
    )
    table = _table("bucket", "status", "paused", "state")
    for name, info in sorted((result.get("buckets") or {}).items()):
        status = info.get("status", "")
        if info.get("migrated_from") is not None:
            status += f" (migrated from state_version {info['migrated_from']})"
        table.add_row(name, status, f"{1000 * float(info.get('paused_seconds') or 0):.1f} ms",
                      f"{info.get('state_bytes', 0):,} bytes")
    return Group(head, table)


def render_whoami(info: dict[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [Text.assemble("user ", (str(info.get("user")), "bold"))]
    if info.get("must_change_password"):
        parts.append(Text("still has its default password: change it with 'bucketly passwd'",
                          style="yellow"))
    parts.append(render_permissions(info.get("permissions") or []))
    return Group(*parts)


def render_permissions(permissions: Iterable[Any]) -> RenderableType:
    rows = list(permissions)
    if not rows:
        return Text("no permissions")
    table = _table("permission", "on")
    for row in rows:
        if isinstance(row, dict):
            table.add_row(str(row.get("permission", "")), str(row.get("pattern", "*")))
        elif isinstance(row, list | tuple) and len(row) == 2:
            table.add_row(str(row[0]), str(row[1]))
        else:
            table.add_row(_cell(row), "")
    return table


def render_stats(stats: dict[str, Any], rates: dict[str, float] | None = None,
                 total_rate: float | None = None, now: float | None = None) -> RenderableType:
    """The ``stats`` view; with ``rates`` (events/s per bucket) as ``stats --watch`` shows it."""
    watching = rates is not None
    head = Text.assemble(
        (str(stats.get("server", "")), "bold"),
        "  up ", format_duration(stats.get("uptime")),
        "  connections ", (str(stats.get("connections", 0)), "bold"),
        f" ({stats.get('connections_total', 0):,} since start)",
        "  events ", (f"{stats.get('events', 0):,}", "bold"),
    )
    if watching:
        head.append(", ")
        head.append(format_rate(total_rate), style="bold green")
    buckets = stats.get("buckets") or {}
    columns = ["bucket", "events"] + (["events/s"] if watching else []) + ["persistence", "jobs"]
    table = _table(*columns)
    for name, info in buckets.items():
        row = [name, f"{info.get('events', 0):,}"]
        if watching:
            row.append(format_rate((rates or {}).get(name)))
        row += [_persistence(info), str(len(info.get("jobs") or {}))]
        table.add_row(*row)
    parts: list[RenderableType] = [head, table if buckets else Text("no buckets")]
    jobs = {name: info["jobs"] for name, info in buckets.items() if info.get("jobs")}
    if jobs:
        parts.append(render_jobs(jobs, title="scheduled jobs", now=now))
    return Group(*parts)


def render_tokens(tokens: list[Any]) -> RenderableType:
    if not tokens:
        return Text("no tokens")
    return render_value(tokens)


def write_error(line: str) -> None:
    click.echo(f"bucketly: error: {line}", err=True)


def _persistence(info: dict[str, Any]) -> str:
    """A bucket's persistence level (a server before levels said only whether durable)."""
    return str(info.get("persistence") or ("durable" if info.get("durable") else "memory"))
