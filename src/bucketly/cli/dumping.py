"""``bucketly dump``: print a bucket's state, or write it to a JSON file, replaced only whole."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from . import output as out
from .base import BucketlyCommand, current_invocation
from .invocation import main_thread_signals
from .output import EXIT_USAGE, CliError, to_json

__all__ = ["dump"]


@click.command(cls=BucketlyCommand)
@click.argument("bucket")
@click.option("-o", "--output", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the dump to FILE as JSON (replaced only once complete), with progress "
                   "on a terminal.")
def dump(bucket: str, path: str | None) -> None:
    """Print the whole state of BUCKET (its handler's dump()), or write it to a file."""
    invocation = current_invocation()
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
