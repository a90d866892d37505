"""``bucketly send``: one event, or a stream of JSON lines sent in batches, with progress."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

import click
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

from ..client.common import DEFAULT_BATCH_SIZE
from . import output as out
from .base import BucketlyCommand, current_invocation, parse_json
from .invocation import Invocation, main_thread_signals
from .output import EXIT_USAGE, CliError

__all__ = ["send"]


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


@click.command(cls=BucketlyCommand)
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
    invocation = current_invocation()
    output = invocation.output()
    if event is not None and path is not None:
        raise click.UsageError("give EVENT or --file, not both")
    if event is not None:
        value = parse_json(event, "EVENT")
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
