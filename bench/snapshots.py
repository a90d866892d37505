"""What the snapshot persistence level costs: snapshot-level against in-memory ingest.

    python bench/snapshots.py [--runs 5] [--events 4000000] [--interval 1]

The unique-clicks workload (``bench/workload.py``, uniform) sent with ``bucketly.Client`` in
batches of 1,000 over one connection to a fresh bucketlyd, into a bucket created with
``persistence="memory"`` and ``persistence="snapshot"`` with a snapshot every ``--interval``
seconds (1 s, the shortest allowed, is the worst case: the default is 60), the snapshot encoded
in a child process (``--snapshot-encoding fork``, the default) and on the event loop
(``loop``). Runs are interleaved in rounds (memory, fork, loop, memory...), so a noisy spell hits
all; a round's ratio is a snapshot rate / the memory rate of that round, and the result is the
median of the rounds' ratios. Every run checks its final count against the truth. Also
reported: the snapshots taken during the snapshot runs, the event loop's longest time in
``fork()``, and the last snapshot's size and duration (fork to commit).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bucketly_runners
from bench.harness import Processes
from bench.workload import BATCH, Workload, WorkloadSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=4_000_000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--handler", default="UniqueClicks",
                        help="bench/handlers.py's class: UniqueClicks (a UniqueIndex) or "
                             "UniqueClicksSets (plain Python: a dict of sets)")
    args = parser.parse_args()
    levels = {"memory": [], "snapshot (fork)": ["--snapshot-encoding", "fork"],
              "snapshot (loop)": ["--snapshot-encoding", "loop"]}
    ratios: dict[str, list[float]] = {level: [] for level in levels}
    rates: dict[str, list[float]] = {level: [] for level in levels}
    taken: dict[str, list[int]] = {level: [] for level in levels}
    fork_max, sizes, seconds = [], [], []
    with tempfile.TemporaryDirectory(prefix="bucketly-bench-") as tmp, Processes() as procs:
        path = Path(tmp) / "uniform.workload"
        Workload.generate(WorkloadSpec(events=args.events)).save(path)
        print(f"{args.handler}, {args.events:,} events, batches of {BATCH}, 1 connection, "
              "snapshot every "
              f"{args.interval:g} s, {args.runs} rounds", flush=True)
        for round_ in range(args.runs):
            pair = {}
            for level, flags in levels.items():
                snapshot = level != "memory"
                result = bucketly_runners.bucketly_run(
                    procs, str(path), "batched", 1, handler=args.handler,
                    persistence="snapshot" if snapshot else "memory",
                    snapshot_interval=args.interval if snapshot else None, server_args=flags,
                )
                pair[level] = result["rate"]
                rates[level].append(result["rate"])
                line = f"  round {round_ + 1} {level:16} {result['rate']:>12,.0f} events/s"
                if snapshot:
                    stats = result["server_stats"]["snapshots"]
                    info = result["bucket_info"]["snapshots"]
                    taken[level].append(stats["snapshots"])
                    if "fork" in level:
                        fork_max.append(stats["fork_seconds_max"])
                        sizes.append(info["bytes"])
                        seconds.append(info["seconds"])
                    line += (f"  ({stats['snapshots']} snapshots, {stats['forked']} forked, "
                             f"fork max {1000 * stats['fork_seconds_max']:.2f} ms, last "
                             f"{info['bytes']:,} bytes in {1000 * info['seconds']:.0f} ms)")
                print(line, flush=True)
            for level in levels:
                ratios[level].append(pair[level] / pair["memory"])
    print()
    print("| bucket | events/s (median) | per round | / memory (median of rounds) | "
          "snapshots per run |")
    print("|---|---|---|---|---|")
    for level in levels:
        shown = ", ".join(f"{r:.3f}" for r in ratios[level])
        print(f"| {level} | {statistics.median(rates[level]):,.0f} | "
              f"{', '.join(f'{r:,.0f}' for r in rates[level])} | "
              f"{statistics.median(ratios[level]):.3f} ({shown}) | "
              f"{', '.join(map(str, taken[level])) or '-'} |")
    print()
    print(f"fork() at most {1000 * max(fork_max):.2f} ms (median of the runs' max "
          f"{1000 * statistics.median(fork_max):.2f} ms); last snapshot "
          f"{statistics.median(sizes):,.0f} bytes, {1000 * statistics.median(seconds):.0f} ms "
          "from fork to commit (medians)")

if __name__ == "__main__":
    main()
