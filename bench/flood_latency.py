"""PING latency and ingest rate of a well-behaved client while others flood bucketlyd.

    python bench/flood_latency.py                      # 10 s baseline, 10 s flood, 2 flooders
    python bench/flood_latency.py --seconds 30 --flooders 4 --hold 1000 --rounds 3

One real bucketlyd (default limits), one authenticated control connection that pings one request
at a time, and ``--flooders`` processes that each cycle, as fast as they can, through the hostile
inputs of tests/test_hostile.py: garbage frames, zero and 4 GiB lengths, truncated frames and
slowloris connections held open, bodies that are not maps, deep nesting, unknown ops, wrong
passwords (throttled), enormous passwords, a user without permissions sending to a bucket
(denied, audited) and commands before auth: one connection per attack for the attacks before
authentication, and per flooder one authenticated connection that sends bad frames without pause
(and reads every reply, so that flow control does not slow it down). The control connection's
PING latency is measured first without the flood (baseline), then during it; the script prints
p50 / p99 / max of both, what the flood did, and the server's memory before and after.

Besides, ``--hold`` connections (1,000 by default) stand open during each flood phase, from one
more process: a quarter idle before authentication, a quarter stalled in the middle of a frame
(a header, then part of the body), a quarter announcing a 4 GiB frame (refused at once, then
replaced), and a quarter sending garbage frames slowly. They come from 127.0.0.2 upwards, 30
per address, as many hosts would (from one address, the per-address cap of 32 connections that
have not logged in lets each new one push out that address's oldest); each that the server closes
(its auth timeout, a refused frame) is replaced at once. The server runs with
``--max-connections 2048`` so that all of them are admitted: the worst case for its memory.

A second well-behaved client, in the same process, sends batches of 1,000 events (``Client``,
default settings) in both phases: its rate, events acknowledged per second, is the ingest figure.
``--rounds`` repeats baseline and flood; figures are medians over the rounds, and the ratios are
flood / baseline of each round's medians. The server's RSS is sampled every 0.1 s: before, the
highest sample during each phase, after.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bucketly.protocol import ClientProtocol, encode_frame, encode_request, pack
from bucketly.testing import run_server

#: Half-open (slowloris) connections each flooder keeps at most.
HELD_OPEN = 50
#: Standing hostile connections per source address (below the per-address cap of 32).
PER_ADDRESS = 30


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class Control:
    """A blocking authenticated connection making one request at a time."""

    def __init__(self, host: str, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.protocol = ClientProtocol()
        self.next_id = 1
        self._read()  # greeting
        reply = self.call("auth", user=user, password=password)
        assert reply.result["user"] == user, reply

    def _read(self) -> Any:
        while (message := self.protocol.next_event()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the control connection")
            self.protocol.receive_data(data)
        return message

    def call(self, op: str, **args: Any) -> Any:
        self.next_id += 1
        self.sock.sendall(encode_request(self.next_id, op, args))
        return self._read()

    def ping_latencies(self, seconds: float, pause: float) -> list[float]:
        latencies = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            reply = self.call("ping")
            latencies.append(time.perf_counter() - start)
            assert reply.result == "pong", reply
            time.sleep(pause)
        return latencies


def _connection_attacks() -> list[tuple[str, bytes]]:
    """Attacks made on a fresh connection each time: (name, bytes sent before auth)."""
    garbage = b"".join(encode_frame(os.urandom(random.randint(0, 200))) for _ in range(12))
    return [
        ("garbage frames", garbage),
        ("zero-length frames", b"\x00\x00\x00\x00" * 12),
        ("4 GiB length", struct.pack(">I", 0xFFFFFFFF)),
        ("bodies that are not maps",
         b"".join(encode_frame(pack(v)) for v in ([1, 2], 7, "x", None) * 3)),
        ("wrong password", encode_request(1, "auth", {"user": "admin", "password": "x"})),
        ("commands before auth",
         b"".join(encode_request(i, "dump", {"bucket": "b"}) for i in range(20))),
        ("enormous password",
         encode_request(1, "auth", {"user": "admin", "password": "p" * 1_000_000})),
    ]


def _frame_attacks() -> bytes:
    """One round of bad frames on an authenticated connection (as a user without grants)."""
    frames = [encode_frame(os.urandom(random.randint(1, 100))) for _ in range(50)]
    frames += [encode_request(i, "nope" * 10, {}) for i in range(50)]
    frames += [encode_request(i, "view", {"bucket": 5, "view": []}) for i in range(50)]
    frames += [encode_request(i, "send", {"bucket": "b", "events": [i] * 10, "ack": False})
               for i in range(50)]
    frames += [encode_request(i, "send", {"bucket": "x" * 5000, "event": 1}) for i in range(5)]
    frames += [encode_frame(b"\x91" * 50_000 + b"\x01")]
    random.shuffle(frames)
    return b"".join(frames)


def _frame_flood(host: str, port: int, deadline: float, counts: dict[str, int]) -> None:
    """A connection that never stops sending bad frames, and reads every reply."""
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(encode_request(0, "auth", {"user": "nobody", "password": "nobody-password"}))
    stop = threading.Event()

    def drain() -> None:
        sock.settimeout(0.5)
        while not stop.is_set():
            try:
                if not sock.recv(1 << 20):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    rounds = [_frame_attacks() for _ in range(4)]
    frames_per_round = 256
    try:
        while time.monotonic() < deadline:
            sock.sendall(rounds[counts["bad frames"] // frames_per_round % 4])
            counts["bad frames"] += frames_per_round
    except OSError:
        pass
    stop.set()
    sock.close()
    reader.join(5)


def _flood(host: str, port: int, seconds: float, seed: int, results: Any) -> None:
    random.seed(seed)
    attacks = _connection_attacks()
    counts = {name: 0 for name, _ in attacks}
    counts["slowloris held"] = 0
    counts["bad frames"] = 0
    deadline = time.monotonic() + seconds
    flood = threading.Thread(target=_frame_flood, args=(host, port, deadline, counts))
    flood.start()
    held: list[socket.socket] = []
    i = 0
    while time.monotonic() < deadline:
        name, data = attacks[i % len(attacks)]
        i += 1
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(0.01)
                try:
                    while sock.recv(65536):
                        pass
                except OSError:
                    pass
            counts[name] += 1
        except OSError:
            pass
        if i % 5 == 0:  # slowloris: a frame started, never finished, connection kept
            try:
                sock = socket.create_connection((host, port), timeout=5)
                sock.sendall(struct.pack(">I", 1000) + b"\x82")
                held.append(sock)
                counts["slowloris held"] += 1
            except OSError:
                pass
            if len(held) > HELD_OPEN:
                held.pop(0).close()
    for sock in held:
        sock.close()
    flood.join(10)
    results.put(counts)


def _hold(host: str, port: int, count: int, seconds: float, results: Any) -> None:
    """Keep ``count`` hostile connections open for ``seconds``, replacing each that closes."""
    kinds = ["idle", "stalled frame", "4 GiB length", "slow garbage"]
    socks: list[tuple[str, socket.socket] | None] = [None] * count
    opened = {kind: 0 for kind in kinds}

    def open_one(i: int) -> None:
        kind = kinds[i % len(kinds)]
        address = f"127.0.0.{2 + i // PER_ADDRESS}"
        try:
            sock = socket.create_connection((host, port), timeout=5, source_address=(address, 0))
            sock.setblocking(False)
            if kind == "stalled frame":
                sock.send(struct.pack(">I", 4000) + b"\x83" + b"x" * 100)
            elif kind == "4 GiB length":
                sock.send(struct.pack(">I", 0xFFFFFFFF))
        except OSError:
            socks[i] = None
            return
        socks[i] = (kind, sock)
        opened[kind] += 1

    for i in range(count):
        open_one(i)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
        for i, entry in enumerate(socks):
            if entry is None:
                open_one(i)
                continue
            kind, sock = entry
            try:
                if kind == "slow garbage":
                    sock.send(encode_frame(os.urandom(random.randint(1, 30))))
                data = sock.recv(65536)
                closed = not data
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                sock.close()
                open_one(i)
    standing = sum(entry is not None for entry in socks)
    for entry in socks:
        if entry is not None:
            entry[1].close()
    results.put({"held " + kind: n for kind, n in opened.items()} | {"standing": standing})


class Ingest(threading.Thread):
    """A good producer: batches of 1,000 events, flushed every 10 batches; counts what is acked."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        import bucketly

        self.client = bucketly.Client(host, port, user="admin", password="admin")
        self.acked = 0
        self.measuring: tuple[float, int] | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        events = [{"url": f"/p/{i % 100}", "user": f"u{i}"} for i in range(10_000)]
        while not self.stopping.is_set():
            self.client.send_many("b", events)
            self.client.flush()
            self.acked += len(events)
        self.client.close()

    def rate(self, seconds: float) -> float:
        start, acked = time.perf_counter(), self.acked
        time.sleep(seconds)
        return (self.acked - acked) / (time.perf_counter() - start)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.1):
            self.peak = max(self.peak, rss_kib(self.pid))

    def reset(self) -> int:
        value, self.peak = self.peak, rss_kib(self.pid)
        return value


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _phase(control: Control, ingest: Ingest, sampler: RssSampler, seconds: float,
           pause: float) -> tuple[list[float], float, int]:
    """Ping and ingest for ``seconds``: (latencies, events/s, peak RSS KiB)."""
    sampler.reset()
    rate: list[float] = []
    measure = threading.Thread(target=lambda: rate.append(ingest.rate(seconds)))
    measure.start()
    latencies = control.ping_latencies(seconds, pause)
    measure.join()
    return latencies, rate[0], sampler.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--hold", type=int, default=1000,
                        help="hostile connections held open during the flood")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.002, help="between two pings")
    options = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bucketly-flood-") as tmp, run_server(
        database=Path(tmp) / "db.dat", extra_args=["--max-connections", "2048"]
    ) as server:
        setup = Control(server.host, server.port, "admin", "admin")
        setup.call("create_user", user="nobody", password="nobody-password")
        setup.call("create_bucket", bucket="b", handler="Count")
        control = Control(server.host, server.port, "admin", "admin")
        ingest = Ingest(server.host, server.port)
        ingest.start()
        sampler = RssSampler(server.pid)
        sampler.start()
        rss_before = rss_kib(server.pid)
        context = multiprocessing.get_context("spawn")
        for _ in range(options.rounds):
            baseline, base_rate, base_rss = _phase(
                control, ingest, sampler, options.seconds, options.pause
            )
            results = context.Queue()
            span = options.seconds + 2
            flooders = [
                context.Process(target=_flood,
                                args=(server.host, server.port, span, seed, results))
                for seed in range(options.flooders)
            ]
            holder = context.Process(
                target=_hold, args=(server.host, server.port, options.hold, span, results)
            )
            for process in [*flooders, holder]:
                process.start()
            time.sleep(1.5)  # let the flood build up, and the held connections open
            during, flood_rate, flood_rss = _phase(
                control, ingest, sampler, options.seconds, options.pause
            )
            for _ in range(len(flooders) + 1):
                for name, count in results.get(timeout=120).items():
                    counts[name] = counts.get(name, 0) + count
            for process in [*flooders, holder]:
                process.join(30)
            rounds.append({
                "baseline": baseline, "during": during, "base_rate": base_rate,
                "flood_rate": flood_rate, "base_rss": base_rss, "flood_rss": flood_rss,
            })
        ingest.stopping.set()
        ingest.join(30)
        time.sleep(1.0)
        rss_after = rss_kib(server.pid)
        alive = control.call("ping").result == "pong"
        stats = setup.call("stats").result
        audit = setup.call("audit", limit=10_000).result

    def med(values: list[float]) -> float:
        return statistics.median(values)

    print(f"bucketlyd flood benchmark: {options.flooders} flooder processes and {options.hold} "
          f"held connections, {options.seconds:g} s each phase, {options.rounds} rounds, "
          f"{os.cpu_count()} CPUs (medians over the rounds)")
    print(f"{'':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'ingest ev/s':>12} "
          f"{'peak RSS MiB':>13}")
    for label, key, rate, rss in (("baseline", "baseline", "base_rate", "base_rss"),
                                  ("flood", "during", "flood_rate", "flood_rss")):
        print(f"{label:>10} "
              f"{1e3 * med([percentile(r[key], 0.5) for r in rounds]):>8.3f} "
              f"{1e3 * med([percentile(r[key], 0.99) for r in rounds]):>8.3f} "
              f"{1e3 * med([max(r[key]) for r in rounds]):>8.3f} "
              f"{med([r[rate] for r in rounds]):>12,.0f} "
              f"{med([r[rss] for r in rounds]) / 1024:>13.1f}")
    p99_ratio = med([percentile(r["during"], 0.99) / percentile(r["baseline"], 0.99)
                     for r in rounds])
    rate_ratio = med([r["flood_rate"] / r["base_rate"] for r in rounds])
    print(f"flood / baseline: PING p99 x{p99_ratio:.2f}, ingest rate x{rate_ratio:.2f}")
    total = sum(v for k, v in counts.items()
                if k not in ("slowloris held", "bad frames", "standing")
                and not k.startswith("held "))
    print(f"flood: {total} hostile connections made and closed, "
          f"{counts.get('slowloris held', 0)} slowloris connections opened, "
          f"{counts['bad frames']} bad frames on authenticated connections; "
          f"{counts.get('standing', 0)} of {options.hold * options.rounds} held connections "
          f"open at the end of the flood phases")
    for name, count in sorted(counts.items()):
        print(f"  {name:>26}: {count}")
    print(f"server: still answering: {alive}; connections since start "
          f"{stats['connections_total']}; RSS {rss_before / 1024:.1f} MiB before, "
          f"{rss_after / 1024:.1f} MiB after; "
          f"{len(audit)} audit entries ({sum(e['count'] for e in audit)} events merged)")


if __name__ == "__main__":
    main()
