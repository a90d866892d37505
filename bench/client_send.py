"""The client's cost per event: ``Client.send`` of small events, as a producer calls it.

    python bench/client_send.py [--events 1000000] [--runs 5]

One fresh bucketlyd (built-in ``Count`` handler); one ``bucketly.Client`` calls ``send`` once per
event, then ``flush``. Reports the client process's CPU seconds per million events (user + system
of this process, which runs the client only: the server is another process) and the wall rate,
median of ``--runs``. Compare two checkouts by running it in each, alternately.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    events = [{"url": f"/p/{i % 100}", "user": f"u{i % 5000}"} for i in range(options.events)]
    cpu, rate = [], []
    with tempfile.TemporaryDirectory() as tmp, run_server(database=Path(tmp) / "db.dat") as srv:
        for run in range(options.runs):
            with bucketly.Client(srv.host, srv.port, user="admin", password="admin") as client:
                bucket = f"b{run}"
                client.create_bucket(bucket, "Count")
                send = client.send
                started, wall = _cpu(), time.perf_counter()
                for event in events:
                    send(bucket, event)
                client.flush()
                cpu.append((_cpu() - started) / options.events * 1e6)
                rate.append(options.events / (time.perf_counter() - wall))
    print(f"client CPU per million events: {statistics.median(cpu):.3f} s "
          f"(runs: {', '.join(f'{c:.3f}' for c in cpu)}); "
          f"rate {statistics.median(rate):,.0f} events/s")


if __name__ == "__main__":
    main()
