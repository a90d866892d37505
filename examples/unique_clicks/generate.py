"""Send clicks to bucketly from several processes, at a chosen rate and URL popularity skew.

    python examples/unique_clicks/generate.py --events 200000 --rate 20000 --processes 4

Each process sends its own deterministic stream of clicks ``{"url": "/page/17", "user": "u4711"}``:
URL popularity follows a Zipf law of exponent ``--zipf`` (``/page/0`` is the most popular; 0 means
uniform), users are uniform. The same ``--seed`` and sizes always give the same clicks, so
``--ground-truth FILE`` can write the exact unique users per URL for tests to compare with.

With several ``--server`` options, process i sends to server i modulo their number: each server
takes a part of the traffic, and they flush into the same PostgreSQL tables. With
``--partitioned`` too, the bucket is partitioned by ``url`` over all of them and every process
sends through one client over all the servers (``bucketly.Client(servers=[...])``): each click
goes to the server that owns its URL, so each (url, user) pair is counted, and flushed, by one
server only (docs/scaling.md).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import random
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click

import bucketly

#: Clicks generated at a time per process: large enough for ``random.choices`` to be fast, small
#: enough that pacing at a low rate stays smooth.
CHUNK = 2_000
#: Pacing steps per second at a fixed rate: a process sends ``rate / steps`` clicks, then sleeps.
PACING_STEPS_PER_SECOND = 50


def split(total: int, parts: int) -> list[int]:
    """How many of ``total`` clicks each of ``parts`` processes sends."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def clicks(
    seed: int, worker: int, count: int, urls: int, users: int, zipf: float
) -> Iterator[list[dict[str, str]]]:
    """Yield the clicks of process ``worker``, in chunks. Deterministic in all its arguments."""
    rng = random.Random(f"{seed}/{worker}")
    cum_weights = list(itertools.accumulate(1.0 / (k**zipf) for k in range(1, urls + 1)))
    url_names = [f"/page/{i}" for i in range(urls)]
    url_ids = range(urls)
    user_ids = range(users)
    left = count
    while left > 0:
        n = min(CHUNK, left)
        left -= n
        picked_urls = rng.choices(url_ids, cum_weights=cum_weights, k=n)
        picked_users = rng.choices(user_ids, k=n)
        yield [
            {"url": url_names[u], "user": f"u{v}"}
            for u, v in zip(picked_urls, picked_users, strict=True)
        ]


def unique_pairs(
    seed: int, events: int, processes: int, urls: int, users: int, zipf: float
) -> dict[str, set[str]]:
    """The users of each URL in a whole run: what PostgreSQL must hold once it is flushed."""
    seen: dict[str, set[str]] = {}
    for worker, count in enumerate(split(events, processes)):
        for chunk in clicks(seed, worker, count, urls, users, zipf):
            for event in chunk:
                seen.setdefault(event["url"], set()).add(event["user"])
    return seen


def parse_server(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, not {text!r}")
    return host, int(port)


def connect(server: tuple[str, int] | list[str], login: tuple[str, str]) -> Any:
    """A client of one server (host, port), or over several (a list of "host:port")."""
    if isinstance(server, list):
        return bucketly.Client(servers=server, user=login[0], password=login[1])
    return bucketly.Client(host=server[0], port=server[1], user=login[0], password=login[1])


def send_clicks(
    worker: int,
    server: tuple[str, int] | list[str],
    login: tuple[str, str],
    bucket: str,
    count: int,
    rate: float,
    stream: tuple[int, int, int, float],
) -> tuple[int, float]:
    """Run one process's share: send ``count`` clicks at ``rate`` per second (0: at once).

    Returns (clicks sent, seconds taken, including the wait for the last acknowledgement).
    """
    seed, urls, users, zipf = stream
    step = max(1, round(rate / PACING_STEPS_PER_SECOND)) if rate else CHUNK
    with connect(server, login) as client:
        started = time.monotonic()
        sent = 0
        for chunk in clicks(seed, worker, count, urls, users, zipf):
            for first in range(0, len(chunk), step):
                for event in chunk[first : first + step]:
                    client.send(bucket, event)
                sent += len(chunk[first : first + step])
                if rate:
                    ahead = started + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        client.flush()
        return sent, time.monotonic() - started


def create_bucket(
    server: tuple[str, int] | list[str],
    login: tuple[str, str],
    bucket: str,
    config: dict[str, Any],
) -> bool:
    """Create the bucket unless it exists (over several servers: partitioned by url, on every
    one); return whether it was created."""
    partition = {"partition_key": "url"} if isinstance(server, list) else {}
    with connect(server, login) as client:
        try:
            client.create_bucket(bucket, "UniqueClicks", config=config, durable=False, **partition)
        except bucketly.BucketExists:
            return False
        return True


@click.command(context_settings={"show_default": True, "max_content_width": 100})
@click.option(
    "--server",
    "servers",
    multiple=True,
    default=["127.0.0.1:8484"],
    help="bucketly server HOST:PORT; repeat it to spread the processes over several servers",
)
@click.option("--user", default="admin", envvar="BUCKETLY_USER", help="bucketly user")
@click.option("--password", default="admin", envvar="BUCKETLY_PASSWORD", help="its password")
@click.option("--bucket", default="clicks", help="bucket to send to")
@click.option("--events", "-n", default=100_000, help="clicks to send, all processes together")
@click.option("--rate", default=0.0, help="clicks per second, all processes together; 0: flat out")
@click.option("--processes", "-p", default=4, help="sending processes")
@click.option("--urls", default=1_000, help="distinct URLs")
@click.option("--users", default=100_000, help="distinct users")
@click.option("--zipf", default=1.1, help="URL popularity skew: weight of the k-th URL is 1/k^S")
@click.option("--seed", default=1, help="same seed and sizes, same clicks")
@click.option(
    "--ground-truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the exact unique users per URL of this run to this JSON file",
)
@click.option(
    "--create/--no-create", default=True, help="create the bucket on each server if missing"
)
@click.option(
    "--partitioned",
    is_flag=True,
    help="partition the bucket by url over all the --server's, each process sending to all",
)
@click.option("--dsn", default=None, help="bucket config when creating: PostgreSQL DSN")
@click.option("--schema", default=None, help="bucket config when creating: PostgreSQL schema")
@click.option("--flush-seconds", type=float, default=None, help="bucket config when creating")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def main(
    servers: Sequence[str],
    user: str,
    password: str,
    bucket: str,
    events: int,
    rate: float,
    processes: int,
    urls: int,
    users: int,
    zipf: float,
    seed: int,
    ground_truth: Path | None,
    create: bool,
    partitioned: bool,
    dsn: str | None,
    schema: str | None,
    flush_seconds: float | None,
    as_json: bool,
) -> None:
    """Send clicks {"url", "user"} to the unique_clicks example's bucket."""
    if processes < 1 or urls < 1 or users < 1 or events < 0 or rate < 0 or zipf < 0:
        raise click.UsageError("--processes, --urls and --users must be >= 1, the rest >= 0")
    addresses = [parse_server(s) for s in servers]
    # Partitioned: one routing client (per process) over all the servers, as "host:port".
    targets: list[Any] = [list(servers)] if partitioned else list(addresses)
    login = (user, password)
    if create:
        config: dict[str, Any] = {
            key: value
            for key, value in [("dsn", dsn), ("schema", schema), ("flush_seconds", flush_seconds)]
            if value is not None
        }
        for address in targets:
            where = ",".join(address) if partitioned else f"{address[0]}:{address[1]}"
            if create_bucket(address, login, bucket, config):
                print(f"created bucket {bucket!r} on {where}", file=sys.stderr)
            elif config:
                print(
                    f"bucket {bucket!r} exists on {where}: its config stays as it was "
                    f"(not {json.dumps(config)})",
                    file=sys.stderr,
                )
    if ground_truth is not None:
        truth = unique_pairs(seed, events, processes, urls, users, zipf)
        ground_truth.write_text(
            json.dumps(
                {
                    "events": events,
                    "pairs": sum(len(u) for u in truth.values()),
                    "urls": {url: len(u) for url, u in sorted(truth.items())},
                }
            )
        )

    jobs = [
        (
            i,
            targets[i % len(targets)],
            login,
            bucket,
            count,
            rate / processes,
            (seed, urls, users, zipf),
        )
        for i, count in enumerate(split(events, processes))
    ]
    started = time.monotonic()
    # spawn, not fork: each process starts clean and opens its own connection.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(send_clicks, jobs)
    seconds = time.monotonic() - started
    sent = sum(n for n, _ in results)
    # Measured from the first click to the last acknowledgement, process start-up excluded.
    sending = max(s for _, s in results)
    summary = {
        "events": sent,
        "seconds": round(sending, 3),
        "clicks_per_second": round(sent / sending) if sending else 0,
        "processes": processes,
        "servers": len(addresses),
        "partitioned": partitioned,
        "wall_seconds": round(seconds, 3),
    }
    if as_json:
        print(json.dumps(summary))
    else:
        print(
            f"sent {sent:,} clicks in {sending:.2f} s ({summary['clicks_per_second']:,} clicks/s) "
            f"from {processes} processes to {len(addresses)} server(s)"
        )


if __name__ == "__main__":
    main()
