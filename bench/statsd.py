"""bucketly's statsd listener against statsd (Node): the same datagrams at rising rates, same run.

    python bench/statsd.py [--rounds 3] [--seconds 3] [--rates 50000,100000,...]

Each round, at each rate, in alternating order: a fresh statsd (bench/peers/statsd_peer.py:
its own ``metrics_received`` counts what it got) and a fresh bucketlyd with ``--statsd`` (its
``stats`` count what it got) are each sent ``rate * seconds`` set lines (``clicks.<url>:<user>|s``,
packed into datagrams of at most 1,432 bytes, the same bytes for both) by the same paced driver.
Both get the same UDP receive buffer (the system default, net.core.rmem_default), so the
comparison is of the daemons, not of their buffers. Then the suite waits for each to work
through its socket queue and counts:

- loss: ``1 - metrics taken / sent``;
- for bucketly, whether every lost datagram was reported: ``datagrams read + kernel_drops``
  must equal the datagrams sent (``accounted``), and with zero loss its sets must hold exactly
  the workload's distinct pairs.

A peer's sweep stops after two rates in a row lose more than 5%. Prints a Markdown table (the
median loss per rate over the rounds, each peer's highest rate with zero median loss at it and
every lower rate) for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bucketly
from bench.harness import Processes, RunFailed, free_port, run_driver
from bench.peers import statsd_peer
from bench.workload import Workload, WorkloadSpec
from bucketly.testing import run_server

RATES = (50_000, 100_000, 150_000, 200_000, 300_000, 400_000, 500_000, 600_000, 800_000)
#: Longest wait for bucketlyd to account for every datagram after the sender stops.
DRAIN_TIMEOUT_SECONDS = 30.0


def _rmem_default() -> int:
    try:
        return int(Path("/proc/sys/net/core/rmem_default").read_text())
    except OSError:
        return 212992


def bucketly_trial(procs: Processes, workload: str, rate: int, duration: float,
                   max_events: int, receive_buffer: int) -> dict[str, Any]:
    """A fresh bucketlyd --statsd, ``rate`` events/s for ``duration`` s, then its own counts."""
    port = free_port(socket.SOCK_DGRAM)
    args = ["--statsd", f"127.0.0.1:{port}", "--statsd-flush-interval", "3600",
            "--statsd-receive-buffer", str(receive_buffer), "--log-level", "warning"]
    with tempfile.TemporaryDirectory(prefix="bucketly-bench-statsd-") as tmp, run_server(
        database=Path(tmp) / "db.dat", extra_args=args
    ) as server, bucketly.Client(server.host, server.port, user="admin",
                                 password="admin") as client:
        events = min(max_events, int(rate * duration))
        sent = run_driver(procs, "statsd-send", workload=workload, port=port, rate=rate,
                          events=events)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while True:
            stats = client.stats()["statsd"]
            accounted = stats["datagrams"] + stats["kernel_drops"] >= sent["packets"]
            if accounted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        taken = int(stats["metrics"])
        if taken > sent["events"] or any(stats["rejected"].values()):
            raise RunFailed(f"bucketly took {taken} metrics, rejected {stats['rejected']}, "
                            f"for {sent['events']} sent")
        loss = 1 - taken / sent["events"]
        if loss == 0:
            truth = Workload.load(workload).truth_for(sent["events"])
            sets = client.view("statsd", "metrics")["sets"]
            held = sum(s["count"] for s in sets.values())
            if held != truth.unique_pairs:
                raise RunFailed(f"bucketly's sets hold {held} values, expected "
                                f"{truth.unique_pairs}")
    return {"target_rate": rate, "send_rate": sent["rate"], "sent": sent["events"],
            "received": taken, "loss": loss, "packets": sent["packets"],
            "datagrams": stats["datagrams"], "kernel_drops": stats["kernel_drops"],
            "accounted": stats["datagrams"] + stats["kernel_drops"] == sent["packets"]}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=statsd_peer.TRIAL_SECONDS)
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES))
    parser.add_argument("--json", help="also write every trial to this file")
    args = parser.parse_args()
    rates = tuple(int(r) for r in args.rates.split(","))
    receive_buffer = _rmem_default()
    max_events = int(max(rates) * args.seconds)
    with tempfile.TemporaryDirectory(prefix="bucketly-bench-") as tmp, Processes() as procs:
        path = Path(tmp) / "uniform.workload"
        print(f"generating {max_events:,} events ...", flush=True)
        Workload.generate(WorkloadSpec("uniform", events=max_events)).save(path)
        workload = str(path)
        install = statsd_peer.install()
        try:
            sweeps: dict[str, list[list[dict[str, Any]]]] = {"statsd": [], "bucketly": []}
            for round_ in range(args.rounds):
                heavy = {"statsd": 0, "bucketly": 0}
                trials: dict[str, list[dict[str, Any]]] = {"statsd": [], "bucketly": []}
                for rate in rates:
                    order = ["statsd", "bucketly"]
                    if (round_ + rates.index(rate)) % 2:
                        order.reverse()
                    for peer in order:
                        if heavy[peer] >= 2:
                            continue
                        if peer == "statsd":
                            result = statsd_peer.trial(procs, install, workload, rate,
                                                       args.seconds, max_events)
                        else:
                            result = bucketly_trial(procs, workload, rate, args.seconds,
                                                    max_events, receive_buffer)
                        trials[peer].append(result)
                        heavy[peer] = heavy[peer] + 1 if result["loss"] > statsd_peer.STOP_LOSS \
                            else 0
                        print(f"round {round_ + 1} {peer:8} {rate:>8,}/s: loss "
                              f"{result['loss']:.2%}"
                              + (f", drops reported {result['kernel_drops']}, accounted "
                                 f"{result['accounted']}" if peer == "bucketly" else
                                 f", socket drops {result['socket_drops']}"), flush=True)
                for peer in trials:
                    sweeps[peer].append(trials[peer])
        finally:
            install.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(sweeps, indent=1))
    print()
    print(report(sweeps, rates, args, receive_buffer, install.version, install.node_version))


def report(sweeps: dict[str, list[list[dict[str, Any]]]], rates: tuple[int, ...],
           args: argparse.Namespace, receive_buffer: int, version: str, node: str) -> str:
    best = {}
    for peer, runs in sweeps.items():
        best[peer] = statsd_peer.zero_loss_rate([{"trials": t} for t in runs])[0]
    lines = [
        f"Same run, {args.rounds} rounds, {args.seconds:g} s per trial, UDP receive buffer "
        f"{receive_buffer:,} bytes for both; statsd {version} on Node {node}.",
        "",
        f"Highest rate with zero median loss (and zero at every lower rate): statsd "
        f"**{best['statsd']:,}/s**, bucketly **{best['bucketly']:,}/s** "
        f"({best['bucketly'] / best['statsd'] if best['statsd'] else float('nan'):.2f}x).",
        "",
        "| rate (metrics/s) | statsd loss (median) | bucketly loss (median) | bucketly: "
        "datagrams lost / reported as kernel drops (median) | bucketly: every lost datagram "
        "reported |",
        "| --- | --- | --- | --- | --- |",
    ]
    def at(peer: str, rate: int) -> list[dict[str, Any]]:
        return [t for run in sweeps[peer] for t in run if t["target_rate"] == rate]

    for rate in rates:
        s, b = at("statsd", rate), at("bucketly", rate)
        s_loss = f"{_median([t['loss'] for t in s]):.2%}" if s else "not run (sweep stopped)"
        if b:
            b_loss = f"{_median([t['loss'] for t in b]):.2%}"
            lost = _median([t["packets"] - t["datagrams"] for t in b])
            reported = _median([t["kernel_drops"] for t in b])
            drops = f"{lost:,} / {reported:,}"
            accounted = "yes" if all(t["accounted"] for t in b) else (
                f"no ({sum(not t['accounted'] for t in b)} of {len(b)} trials)")
        else:
            b_loss, drops, accounted = "not run (sweep stopped)", "-", "-"
        lines.append(f"| {rate:,} | {s_loss} | {b_loss} | {drops} | {accounted} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
