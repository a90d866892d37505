"""kill -9 soak: nothing acknowledged lost, nothing counted twice, over many crashes.

    python bench/kill9_soak.py                      # 1,000 cycles
    python bench/kill9_soak.py --cycles 50 --seed 7 --json

One database file, one durable bucket (``EventTally`` of bench/kill9_handlers.py, which counts
each (producer, event id) it is given). ``PRODUCERS`` threads each send numbered events through
their own ``bucketly.Client`` (random batch sizes, pipelining depths and flush intervals) and
note what each successful ``flush()`` acknowledged. Each cycle, at a random moment, bucketlyd is
killed with SIGKILL and started again on the same file and port; the producers see their
connection break, wait for the new server's readiness, and carry on: their clients resend the
batches that were in flight (producer id + seq), which the server must recognise when it had
applied them already. One cycle in ten kills the new server a second time before it is ready
(during start-up and recovery). Snapshots and compaction run all along (``--snapshot-events``),
so kills land in them too.

At the end every producer flushes and the bucket is read back: *acknowledged* events (what a
flush confirmed), *lost* (acknowledged, not in the bucket), *doubled* (in the bucket more than
once), *unsent* (in the bucket, never sent). Events a client gave up on
(``ConnectionLost.unacknowledged``, after ``RESEND_LIMIT`` resends) are counted apart: they are
not acknowledged, so they may be missing, but never doubled. Also reported: *in doubt*, events
the server had applied whose acknowledgement the kill cut off (found in the restarted server
before the producers resent them): the resends that had to be recognised.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import bucketly
from bucketly.testing import RunningServer, bucketlyd_command

HANDLERS = Path(__file__).resolve().parent / "kill9_handlers.py"
BUCKET = "tally"
PRODUCERS = 8
#: Snapshot this often (events), so that kills land in snapshots and compaction too, and
#: recovery stays short however long the soak runs.
SNAPSHOT_EVENTS = 20_000
#: Longest a cycle lets the producers run before the kill.
MAX_RUN_SECONDS = 0.5
#: Share of cycles that also kill the restarted server before it is ready.
EARLY_KILL_SHARE = 0.1
SOAK_PASSWORD = "soak-password-1"


class Producer(threading.Thread):
    """Sends events ``[name, 0]``, ``[name, 1]``, ... until told to stop; notes what is acked."""

    def __init__(self, name: str, host: str, port: int, token: str, rng: random.Random,
                 up: threading.Event) -> None:
        super().__init__(name=f"producer-{name}", daemon=True)
        self.producer = name
        self.rng = rng
        self.up = up
        self.client = bucketly.Client(
            host, port, token=token, batch_size=rng.randint(5, 500),
            max_in_flight=rng.randint(1, 32), linger=0.005, timeout=15, connect=False,
        )
        self.lock = threading.Lock()
        #: Ids handed to the client so far: 0 .. sent-1.
        self.sent = 0
        #: Every id below this was acknowledged, but those in ``given_up``.
        self.acked_upto = 0
        self.given_up: set[int] = set()
        self.losses = 0
        self.failure: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self._send_some()
                except bucketly.BucketlyConnectionError as exc:
                    self._lost(exc)
            self._finish()
        except BaseException as exc:  # reported by the orchestrator
            self.failure = exc

    def _send_some(self) -> None:
        for _ in range(self.rng.randint(1, 5)):
            n = self.rng.randint(1, 20)
            first = self.sent
            self.sent += n  # the client holds them from here until acked or given up
            self.client.send_many(BUCKET, [[self.producer, i] for i in range(first, first + n)])
        self.client.flush()
        with self.lock:
            self.acked_upto = self.sent

    def _lost(self, exc: bucketly.BucketlyError) -> None:
        self.losses += 1
        if isinstance(exc, bucketly.ConnectionLost):
            for _, events in exc.unacknowledged:
                self.given_up.update(i for _, i in events)
        self.up.wait()

    def _finish(self) -> None:
        """Flush until everything is acknowledged (or given up), then close."""
        while True:
            try:
                self.client.flush()
                break
            except bucketly.BucketlyConnectionError as exc:
                self._lost(exc)
        with self.lock:
            self.acked_upto = self.sent
        self.client.close()

    def stop(self) -> None:
        self.stopping.set()


def start_server(db: Path, port: int, snapshot_events: int) -> RunningServer:
    args = ["--snapshot-events", str(snapshot_events), "--snapshot-seconds", "1"]
    server = RunningServer(bucketlyd_command(db, HANDLERS, port, args))
    server.wait_ready()
    return server


def run_soak(cycles: int, *, seed: int = 1, directory: str | os.PathLike[str] | None = None,
             producers: int = PRODUCERS, max_run: float = MAX_RUN_SECONDS,
             snapshot_events: int = SNAPSHOT_EVENTS,
             progress: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the soak; return its figures (see the module doc). Raises if a producer failed."""
    rng = random.Random(seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bucketly-soak-", dir=directory) as tmp:
        db = Path(tmp) / "soak.dat"
        server = start_server(db, 0, snapshot_events)
        port = server.port
        with server.client() as admin:
            admin.create_bucket(BUCKET, "EventTally", durable=True)
            admin.create_user("soak", SOAK_PASSWORD)
            admin.grant("soak", "send", BUCKET)
            admin.grant("soak", "view", BUCKET)
            admin.grant("soak", "create_token", "*")
        # A token spares every reconnect of every producer a password hash (~30 ms each).
        with server.client("soak", SOAK_PASSWORD) as soak:
            token = soak.create_token("soak")["token"]
        up = threading.Event()
        up.set()
        threads = [Producer(f"p{k}", server.host, port, token, random.Random(rng.random()), up)
                   for k in range(producers)]
        for thread in threads:
            thread.start()
        figures: dict[str, Any] = {"cycles": 0, "early_kills": 0, "in_doubt": 0,
                                   "cycles_in_doubt": 0, "kills_with_acks": 0}
        try:
            for cycle in range(cycles):
                acked_before = sum(t.acked_upto for t in threads)
                # The random moment: at once after the start, or after up to max_run seconds.
                if rng.random() >= 0.2:
                    time.sleep(rng.random() * max_run)
                up.clear()  # before the kill: a producer that sees it break waits for the next
                server.kill()
                figures["kills_with_acks"] += sum(t.acked_upto for t in threads) > acked_before
                if rng.random() < EARLY_KILL_SHARE:
                    early = RunningServer(bucketlyd_command(
                        db, HANDLERS, port, ["--snapshot-events", str(snapshot_events)]))
                    time.sleep(rng.random() * 0.3)  # anywhere in start-up and recovery
                    early.kill()
                    figures["early_kills"] += 1
                server = start_server(db, port, snapshot_events)
                with bucketly.Client(server.host, port, token=token) as reader:
                    heads = reader.view(BUCKET, "heads")
                # Applied before the kill, never acknowledged: the resends to be recognised.
                # (A lower bound: a producer may have reconnected already.)
                doubt = sum(max(0, heads.get(t.producer, 0) - t.acked_upto) for t in threads)
                figures["in_doubt"] += doubt
                figures["cycles_in_doubt"] += doubt > 0
                up.set()
                figures["cycles"] = cycle + 1
                if progress is not None:
                    progress(cycle + 1, figures)
        finally:
            up.set()
            for thread in threads:
                thread.stop()
            for thread in threads:
                thread.join(120)
        failures = [t for t in threads if t.failure is not None or t.is_alive()]
        if failures:
            server.kill()
            raise RuntimeError(f"producer {failures[0].producer} failed: {failures[0].failure!r}")
        figures.update(_account(server, token, threads))
        figures["log_lines_with_errors"] = [line for line in server.logs if "ERROR" in line]
        server.stop()
    figures["seconds"] = time.monotonic() - started
    return figures


def _account(server: RunningServer, token: str, threads: list[Producer]) -> dict[str, Any]:
    acked = lost = doubled = unsent = given_up = given_up_applied = 0
    examples: dict[str, Any] = {}
    with bucketly.Client(server.host, server.port, token=token) as reader:
        for t in threads:
            tally = reader.view(BUCKET, "tally", producer=t.producer, below=t.sent)
            missing = set(tally["missing"])
            if tally["missing_count"] > len(missing):  # too many to list: a lower bound
                lost_here = max(0, tally["missing_count"] - len(t.given_up))
            else:
                lost_here = len(missing - t.given_up)
            acked += t.sent - len(t.given_up)
            lost += lost_here
            doubled += tally["doubled_count"]
            unsent += tally["beyond_count"]
            given_up += len(t.given_up)
            given_up_applied += len(t.given_up - missing)
            if lost_here or tally["doubled_count"]:
                examples[t.producer] = {"missing": sorted(missing - t.given_up)[:10],
                                        "doubled": tally["doubled"][:10]}
    return {"producers": len(threads), "acknowledged": acked, "lost": lost, "doubled": doubled,
            "unsent": unsent, "given_up": given_up, "given_up_applied": given_up_applied,
            "reconnects": sum(t.losses for t in threads), "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--producers", type=int, default=PRODUCERS)
    parser.add_argument("--max-run", type=float, default=MAX_RUN_SECONDS,
                        help="longest time between a restart and the next kill (s)")
    parser.add_argument("--snapshot-events", type=int, default=SNAPSHOT_EVENTS)
    parser.add_argument("--dir", default=None, help="where the database file goes")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()

    def progress(cycle: int, figures: dict[str, Any]) -> None:
        if cycle % 50 == 0 or cycle == options.cycles:
            print(f"cycle {cycle}/{options.cycles}: {figures['in_doubt']} events in doubt "
                  f"so far", file=sys.stderr, flush=True)

    figures = run_soak(options.cycles, seed=options.seed, directory=options.dir,
                       producers=options.producers, max_run=options.max_run,
                       snapshot_events=options.snapshot_events, progress=progress)
    if options.json:
        print(json.dumps(figures))
    else:
        print(f"kill -9 soak: {figures['cycles']} cycles ({figures['early_kills']} also killed "
              f"during start-up), {figures['producers']} producers, "
              f"{figures['seconds']:.0f} s, seed {options.seed}")
        for key in ("acknowledged", "lost", "doubled", "unsent", "in_doubt", "cycles_in_doubt",
                    "kills_with_acks", "given_up", "given_up_applied", "reconnects"):
            print(f"  {key:>18}: {figures[key]:,}")
        if figures["examples"] or figures["log_lines_with_errors"]:
            print(json.dumps({"examples": figures["examples"],
                              "errors": figures["log_lines_with_errors"][:10]}, indent=1))
    sys.exit(1 if figures["lost"] or figures["doubled"] or figures["unsent"] else 0)


if __name__ == "__main__":
    main()
