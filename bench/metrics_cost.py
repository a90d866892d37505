"""What the metrics endpoint costs ingest: scraped every second against off, same run.

    python bench/metrics_cost.py [--rounds 7] [--repeat 10]

Each round starts two fresh bucketlyd (built-in ``Count`` handler): one without
``--metrics-address``, one with it and a thread scraping ``/metrics`` every second, and sends the
same events to each (1M events ``--repeat`` times) with ``bucketly.Client.send_many`` (batches
of 1,000), in alternating order. The scraper scrapes once at the start, then every second.
Reports the median of the per-round ratios of the rates (on / off), and of the events per
server CPU-second (the CPU time bucketlyd used while it ingested, from /proc): on a machine shared
with other tenants the wall-clock rate swings by 2x from one run to the next, the CPU the server
spends per event much less.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bucketly
from bench.harness import cpu_seconds
from bucketly.testing import run_server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rate(events: list[object], repeat: int, metrics: bool) -> tuple[float, float, int]:
    port = _free_port()
    extra = ["--metrics-address", f"127.0.0.1:{port}"] if metrics else []
    scrapes = 0
    with tempfile.TemporaryDirectory() as tmp, run_server(
        database=Path(tmp) / "db.dat", extra_args=extra
    ) as server:
        stop = threading.Event()

        def scrape() -> None:
            nonlocal scrapes
            while True:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
                scrapes += 1
                if stop.wait(1.0):
                    return

        scraper = threading.Thread(target=scrape, daemon=True)
        with bucketly.Client(server.host, server.port, user="admin", password="admin") as c:
            c.create_bucket("b", "Count")
            if metrics:
                scraper.start()
            cpu = cpu_seconds(server.pid)
            started = time.perf_counter()
            for _ in range(repeat):
                for i in range(0, len(events), 1000):
                    c.send_many("b", events[i : i + 1000])
            c.flush()
            rate = repeat * len(events) / (time.perf_counter() - started)
            per_cpu = repeat * len(events) / (cpu_seconds(server.pid) - cpu)
        stop.set()
        if metrics:
            scraper.join(5)
    return rate, per_cpu, scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=10)
    options = parser.parse_args()
    events: list[object] = [{"url": f"/p/{i % 100}", "user": f"u{i}"} for i in range(10**6)]
    ratios, cpu_ratios, on_rates, off_rates, scrapes = [], [], [], [], 0
    for round_ in range(options.rounds):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        rates, per_cpu = {}, {}
        for metrics in order:
            rates[metrics], per_cpu[metrics], n = _rate(events, options.repeat, metrics)
            scrapes += n
        ratios.append(rates[True] / rates[False])
        cpu_ratios.append(per_cpu[True] / per_cpu[False])
        on_rates.append(rates[True])
        off_rates.append(rates[False])
        print(f"round {round_ + 1}: on {rates[True]:,.0f} events/s, off {rates[False]:,.0f}; "
              f"events per server CPU-second on {per_cpu[True]:,.0f}, off "
              f"{per_cpu[False]:,.0f}", flush=True)
    print(f"ingest with /metrics scraped every second: {statistics.median(on_rates):,.0f} "
          f"events/s; off: {statistics.median(off_rates):,.0f}; ratio on/off (median of "
          f"{options.rounds} rounds) {statistics.median(ratios):.3f} (rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}); events per server CPU-second, ratio "
          f"on/off {statistics.median(cpu_ratios):.3f} (rounds: "
          f"{', '.join(f'{r:.3f}' for r in cpu_ratios)}); {scrapes} scrapes")


if __name__ == "__main__":
    main()
