"""PING latency of a well-behaved client while other connections flood bucketlyd with bad input.

    python bench/flood_latency.py                      # 10 s baseline, 10 s flood, 2 flooders
    python bench/flood_latency.py --seconds 30 --flooders 4

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
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--flooders", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.002, help="between two pings")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bucketly-flood-") as tmp, run_server(
        database=Path(tmp) / "db.dat"
    ) as server:
        setup = Control(server.host, server.port, "admin", "admin")
        setup.call("create_user", user="nobody", password="nobody-password")
        setup.call("create_bucket", bucket="b", handler="Count")
        control = Control(server.host, server.port, "admin", "admin")
        rss_before = rss_kib(server.pid)
        baseline = control.ping_latencies(options.seconds, options.pause)

        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        flooders = [
            context.Process(target=_flood,
                            args=(server.host, server.port, options.seconds + 1, seed, results))
            for seed in range(options.flooders)
        ]
        for process in flooders:
            process.start()
        time.sleep(1.0)  # let the flood build up
        during = control.ping_latencies(options.seconds, options.pause)
        counts: dict[str, int] = {}
        for _ in flooders:
            for name, count in results.get(timeout=60).items():
                counts[name] = counts.get(name, 0) + count
        for process in flooders:
            process.join(30)
        rss_after = rss_kib(server.pid)
        alive = control.call("ping").result == "pong"
        stats = setup.call("stats").result
        audit = setup.call("audit", limit=10_000).result

    print(f"bucketlyd flood benchmark: {options.flooders} flooder processes, "
          f"{options.seconds:g} s each phase, {os.cpu_count()} CPUs")
    print(f"{'':>10} {'pings':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, values in (("baseline", baseline), ("flood", during)):
        print(f"{label:>10} {len(values):>7} {1e3 * percentile(values, 0.5):>8.3f} "
              f"{1e3 * percentile(values, 0.99):>8.3f} {1e3 * max(values):>8.3f}")
    total = sum(v for k, v in counts.items() if k not in ("slowloris held", "bad frames"))
    print(f"flood: {total} hostile connections ({total / options.seconds:.0f}/s), "
          f"{counts.get('slowloris held', 0)} slowloris connections opened, "
          f"{counts['bad frames']} bad frames on authenticated connections "
          f"({counts['bad frames'] / options.seconds:.0f}/s)")
    for name, count in sorted(counts.items()):
        print(f"  {name:>26}: {count}")
    print(f"server: still answering: {alive}; connections since start "
          f"{stats['connections_total']}; RSS {rss_before} KiB before, {rss_after} KiB after; "
          f"{len(audit)} audit entries ({sum(e['count'] for e in audit)} events merged)")


if __name__ == "__main__":
    main()
