"""Two bucketlyd source trees against each other: the same client, the same workload, rounds.

    python bench/ab.py A_SRC B_SRC [--handler UniqueClicks] [--durable] [--rounds 7]

``A_SRC`` and ``B_SRC`` are ``src`` folders (for instance of ``git worktree`` checkouts, or of
``git archive COMMIT src | tar -x``, with the built ``_speedups`` copied in): each run starts a
fresh bucketlyd with ``PYTHONPATH`` set to one of them, sends the uniform workload through
``bucketly.Client`` over 1 connection, and checks the totals against the truth. Rounds run A
then B, then B then A, so that a noisy spell on a shared machine hits both; the result is the
median over rounds of B's rate divided by A's, for events/s and for events per server
CPU-second. How a change to the server moves its own speed, without the other systems of
``run.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bucketly_runners import HANDLERS
from bench.handlers import DEFAULT
from bench.harness import cpu_seconds
from bench.workload import BUCKET, Workload, WorkloadSpec


def one_run(src: str, workload: Workload, events: list[Any], handler: str,
            durable: bool) -> tuple[float, float]:
    """(events/s, events per server CPU-second) of one run against bucketlyd from ``src``."""
    import bucketly
    from bucketly.testing import run_server

    env = {**os.environ, "PYTHONPATH": src}
    with tempfile.TemporaryDirectory(prefix="bucketly-ab-") as tmp, run_server(
        handlers=HANDLERS, database=Path(tmp) / "ab.dat", env=env
    ) as running:
        with bucketly.Client(running.host, running.port, user="admin",
                             password="admin") as client:
            client.create_bucket(BUCKET, handler, config={}, durable=durable)
            send = client.send
            cpu_before = cpu_seconds(running.pid)
            start = time.perf_counter()
            for event in events:
                send(BUCKET, event)
            client.flush()
            seconds = time.perf_counter() - start
            cpu = cpu_seconds(running.pid) - cpu_before
            totals = client.view(BUCKET, "totals")
    workload.truth.check(totals["unique_pairs"], totals["per_url"])
    return len(events) / seconds, len(events) / cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a_src")
    parser.add_argument("b_src")
    parser.add_argument("--handler", default=DEFAULT)
    parser.add_argument("--durable", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    workload = Workload.generate(WorkloadSpec("uniform", events=args.events))
    events = workload.events()
    sources = {"A": args.a_src, "B": args.b_src}
    rates: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    for n in range(args.rounds):
        got = {side: one_run(sources[side], workload, events, args.handler, args.durable)
               for side in ("AB" if n % 2 == 0 else "BA")}
        for side in "AB":
            rates[side].append(got[side])
        ratios.append(got["B"][0] / got["A"][0])
        cpu_ratios.append(got["B"][1] / got["A"][1])
        print(f"round {n + 1}: A {got['A'][0]:,.0f}/s ({got['A'][1]:,.0f} per CPU-s), "
              f"B {got['B'][0]:,.0f}/s ({got['B'][1]:,.0f} per CPU-s), B/A {ratios[-1]:.3f}",
              flush=True)
    median = statistics.median
    a_rate = median(r for r, _ in rates["A"])
    b_rate = median(r for r, _ in rates["B"])
    print(f"{args.handler}{' durable' if args.durable else ''}, {args.rounds} rounds: "
          f"A {a_rate:,.0f}/s, B {b_rate:,.0f}/s"
          f"; B/A median {median(ratios):.3f} (events/s), {median(cpu_ratios):.3f} "
          "(per server CPU-second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
