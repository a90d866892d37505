"""The client's cost per event: ``Client.send`` of small events, as a producer calls it.

    python bench/client_send.py [--events 1000000] [--runs 5]

One fresh bucketlyd (built-in ``Count`` handler); one ``bucketly.Client`` calls ``send`` once per
event, then ``flush``. Reports the client process's CPU seconds per million events (user + system
of this process, which runs the client only: the server is another process) and the wall rate,
median of ``--runs``. Compare two checkouts by running it in each, alternately.

``--sharded`` adds, in the same rounds, ``Client(servers=[...])`` over two servers (a bucket
routed to one, and a bucket partitioned by ``url`` over both) and their CPU per event as a
ratio to the single-server client's of the same round.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bucketly
from bucketly.testing import run_server


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _send_all(client: object, bucket: str, events: list[dict[str, str]]) -> tuple[float, float]:
    """CPU seconds per million events and events/s of ``send`` each, then ``flush``."""
    send = client.send  # type: ignore[attr-defined]
    started, wall = _cpu(), time.perf_counter()
    for event in events:
        send(bucket, event)
    client.flush()  # type: ignore[attr-defined]
    return (_cpu() - started) / len(events) * 1e6, len(events) / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--sharded", action="store_true",
        help="also, in each round, Client(servers=[two servers]) on a bucket routed to one of "
        "them and on a bucket partitioned by url over both; report their cost per event "
        "against the single-server client's in the same round (issue 14)",
    )
    options = parser.parse_args()
    events = [{"url": f"/p/{i % 100}", "user": f"u{i % 5000}"} for i in range(options.events)]
    login = {"user": "admin", "password": "admin"}
    kinds = ["single", "sharded/routed", "sharded/partitioned"] if options.sharded else ["single"]
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    rate: dict[str, list[float]] = {k: [] for k in kinds}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        servers = [
            stack.enter_context(run_server(database=tmp / f"db{i}.dat"))
            for i in range(2 if options.sharded else 1)
        ]
        addresses = [f"{s.host}:{s.port}" for s in servers]
        for run in range(options.runs):
            for kind in kinds:
                bucket = f"b{run}-{kind.replace('/', '-')}"
                if kind == "single":
                    client = bucketly.Client(servers[0].host, servers[0].port, **login)
                    client.create_bucket(bucket, "Count")
                else:
                    client = bucketly.Client(servers=addresses, **login)
                    key = {"partition_key": "url"} if kind.endswith("partitioned") else {}
                    client.create_bucket(bucket, "Count", **key)
                with client:
                    c, r = _send_all(client, bucket, events)
                cpu[kind].append(c)
                rate[kind].append(r)
    for kind in kinds:
        line = (f"{kind}: client CPU per million events: {statistics.median(cpu[kind]):.3f} s "
                f"(runs: {', '.join(f'{c:.3f}' for c in cpu[kind])}); "
                f"rate {statistics.median(rate[kind]):,.0f} events/s")
        if kind != "single":
            ratios = [c / s for c, s in zip(cpu[kind], cpu["single"], strict=True)]
            line += (f"; CPU per event vs single, median of per-round ratios: "
                     f"{statistics.median(ratios):.2f}x (rounds: "
                     f"{', '.join(f'{x:.2f}' for x in ratios)})")
        print(line)


if __name__ == "__main__":
    main()
