"""What durability costs: durable against in-memory ingest, and recovery time.

    python bench/durability.py [--runs 3] [--events 1000000] [--only ingest|recovery]

**Ingest.** The unique-clicks workload (``bench/workload.py``, uniform) sent with
``bucketly.Client`` in batches of 1,000 (``client.send`` per event, ``flush`` at the end) to a
fresh bucketlyd, into a bucket created with ``durable=False`` and ``durable=True``, over 1 and 8
connections. Measurements run interleaved in rounds (memory, durable, memory, durable...), so
a noisy spell hits both; the ratio of a round is durable rate / memory rate of that round, and the
result is the median of the rounds' ratios. Every run checks its final count against the truth.

**Recovery.** ``--events`` small events (``{"url", "user"}``, 1,000 per batch) are sent to a
durable bucket of a bucketlyd that never snapshots (``--snapshot-events`` and
``--snapshot-seconds`` set out of reach), which is then killed with SIGKILL. Recovery time is
measured on restart, twice: from the log alone (the restart replays every event), then, after a
graceful stop (which snapshots and compacts), from the snapshot. Each figure is what bucketlyd
logs ("recovered durable bucket ... in X s"), plus the whole time from exec to "ready".
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bucketly_runners
from bench.harness import Processes, median
from bench.workload import BATCH, BUCKET, Workload, WorkloadSpec

HANDLERS = bucketly_runners.HANDLERS
HANDLER_CLASS = bucketly_runners.HANDLER_CLASS
NEVER = ["--snapshot-events", str(10**15), "--snapshot-seconds", str(10**9)]
_RECOVERED = re.compile(r"recovered durable bucket .* in ([0-9.]+)s")


def ingest(workload: Path, runs: int, connections: list[int]) -> list[dict[str, Any]]:
    results = []
    with Processes() as procs:
        for conns in connections:
            rates: dict[bool, list[float]] = {False: [], True: []}
            ratios = []
            for round_ in range(runs):
                pair = {}
                for durable in (False, True):
                    result = bucketly_runners.bucketly_run(
                        procs, str(workload), "batched", conns, durable
                    )
                    pair[durable] = result["rate"]
                    rates[durable].append(result["rate"])
                    print(f"  round {round_ + 1} {conns} conn {'durable' if durable else 'memory '}"
                          f" {result['rate']:>12,.0f} events/s", flush=True)
                ratios.append(pair[True] / pair[False])
            results.append({
                "connections": conns,
                "memory": median(rates[False]),
                "durable": median(rates[True]),
                "ratio": median(ratios),
                "ratios": ratios,
            })
    return results


def _start(db: Path, extra: list[str]) -> tuple[Any, float]:
    from bucketly.testing import RunningServer, bucketlyd_command

    started = time.perf_counter()
    server = RunningServer(bucketlyd_command(db, HANDLERS, 0, extra))
    server.wait_ready(timeout=600)
    return server, time.perf_counter() - started


def _recovered_seconds(server: Any) -> float:
    line = server.wait_for_log(_RECOVERED.pattern)
    match = _RECOVERED.search(line)
    assert match
    return float(match.group(1))


def recovery(events: int, runs: int, batch: int = BATCH) -> dict[str, Any]:
    workload = Workload.generate(WorkloadSpec(events=events))
    batches = workload.batches(batch)
    truth = workload.truth.unique_pairs
    from_log: list[float] = []
    from_log_ready: list[float] = []
    from_snapshot: list[float] = []
    from_snapshot_ready: list[float] = []
    sizes: dict[str, int] = {}
    for run in range(runs):
        with tempfile.TemporaryDirectory(prefix="bucketly-recovery-") as tmp:
            db = Path(tmp) / "recovery.dat"
            server, _ = _start(db, NEVER)
            try:
                with server.client(batch_size=batch) as client:
                    client.create_bucket(BUCKET, HANDLER_CLASS, durable=True)
                    for events_of_one_send in batches:
                        client.send_many(BUCKET, events_of_one_send)
                    client.flush()
            finally:
                server.kill()
            sizes["log"] = sum(f.stat().st_size for f in Path(tmp).iterdir())
            server, ready = _start(db, NEVER)
            try:
                from_log.append(_recovered_seconds(server))
                from_log_ready.append(ready)
                with server.client() as client:
                    info = client.bucket_info(BUCKET)
                    assert client.view(BUCKET, "totals")["unique_pairs"] == truth
                    assert info["durability"]["log_events"] == events, info
            finally:
                assert server.stop() == 0  # a graceful stop snapshots and compacts
            server, ready = _start(db, NEVER)
            try:
                from_snapshot.append(_recovered_seconds(server))
                from_snapshot_ready.append(ready)
                with server.client() as client:
                    assert client.view(BUCKET, "totals")["unique_pairs"] == truth
                    info = client.bucket_info(BUCKET)
                    assert info["durability"]["log_events"] == 0, info
            finally:
                server.stop()
            sizes["snapshot"] = sum(f.stat().st_size for f in Path(tmp).iterdir())
        print(f"  run {run + 1}: from the log {from_log[-1]:.2f}s (ready after "
              f"{from_log_ready[-1]:.2f}s), from the snapshot {from_snapshot[-1]:.2f}s (ready "
              f"after {from_snapshot_ready[-1]:.2f}s)", flush=True)
    return {
        "events": events,
        "batch": batch,
        "unique_pairs": truth,
        "from_log": median(from_log),
        "from_log_ready": median(from_log_ready),
        "from_snapshot": median(from_snapshot),
        "from_snapshot_ready": median(from_snapshot_ready),
        "runs": runs,
        "file_bytes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--batches", default=f"{BATCH},10",
                        help="events per send in the recovery runs, comma-separated")
    parser.add_argument("--only", choices=("ingest", "recovery"))
    args = parser.parse_args()
    if args.only != "recovery":
        with tempfile.TemporaryDirectory(prefix="bucketly-bench-") as tmp:
            path = Path(tmp) / "uniform.workload"
            Workload.generate(WorkloadSpec(events=args.events)).save(path)
            print(f"ingest: {args.events:,} events, batches of {BATCH}, {args.runs} rounds")
            results = ingest(path, args.runs, [int(c) for c in args.connections.split(",")])
        print()
        print("| connections | in memory (events/s) | durable (events/s) | durable / memory |")
        print("|---|---|---|---|")
        for r in results:
            print(f"| {r['connections']} | {r['memory']:,.0f} | {r['durable']:,.0f} | "
                  f"{r['ratio']:.2f} (rounds: {', '.join(f'{x:.2f}' for x in r['ratios'])}) |")
        print()
    if args.only != "ingest":
        results = []
        for batch in (int(b) for b in args.batches.split(",")):
            print(f"recovery: {args.events:,} small events, {batch} per send, {args.runs} runs")
            results.append(recovery(args.events, args.runs, batch))
        print()
        print("| recovering from | events per log record | recovery (s) | exec to ready (s) |")
        print("|---|---|---|---|")
        for r in results:
            print(f"| the log: {r['events']:,} events | {r['batch']} | {r['from_log']:.2f} | "
                  f"{r['from_log_ready']:.2f} |")
            print(f"| a snapshot ({r['unique_pairs']:,} unique pairs) | {r['batch']} | "
                  f"{r['from_snapshot']:.2f} | {r['from_snapshot_ready']:.2f} |")
        for r in results:
            print(f"file sizes with {r['batch']} per record (bytes): {r['file_bytes']}")


if __name__ == "__main__":
    main()
