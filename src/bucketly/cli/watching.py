"""``bucketly stats``: the server's statistics, once or refreshed in place (``--watch``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.live import Live
from rich.text import Text

from . import output as out
from .base import BucketlyCommand, current_invocation
from .output import to_json

__all__ = ["stats"]


@click.command(cls=BucketlyCommand)
@click.option("-w", "--watch", is_flag=True,
              help="Refresh in place, like top: events/s overall and per bucket, jobs. Ctrl-C "
                   "quits. Piped, prints one JSON line per refresh.")
@click.option("-n", "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              metavar="SECONDS", help="Seconds between refreshes with --watch.")
@click.option("-c", "--count", type=click.IntRange(min=1), metavar="N",
              help="With --watch, stop after N refreshes.")
def stats(watch: bool, interval: float, count: int | None) -> None:
    """Show server statistics: connections, events, buckets, scheduled jobs."""
    invocation = current_invocation()
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
