"""What one authenticated sender can make bucketlyd hold: the memory-amplification attacks.

    python bench/memory.py [--runs 3]

Each attack runs against a fresh bucketlyd with its default limits, from one connection logged in
as admin, with events that cost the most memory per byte (empty maps: one byte on the wire, 72
decoded). The figure is the growth of the server's peak RSS (``VmHWM``) over its RSS before the
attack, median of ``--runs``; "after" is the RSS once the attack's replies are all in. The
attacks are those of issue 17, item 2:

- ``16 MiB frame``: one frame of 16 Mi empty maps to an in-memory bucket (refused unread);
- ``16 x 1 Mi, memory``: 16 pipelined frames of (just under) ``--max-frame-objects`` empty
  maps each, to an in-memory bucket;
- ``16 x 1 Mi, durable``: the same, to a durable bucket (each held decoded until its commit).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import peak_rss_bytes, rss_bytes
from bucketly.protocol import ClientProtocol, encode_frame, encode_request, pack
from bucketly.protocol.limits import DEFAULT_MAX_FRAME_OBJECTS
from bucketly.testing import run_server

MiB = 1024 * 1024


def _send_frame(events: int, request_id: int, bucket: str) -> bytes:
    head = pack({"id": request_id, "op": "send", "bucket": bucket})
    body = bytes([head[0] + 1]) + head[1:] + pack("events") + b"\xdd" + struct.pack(">I", events)
    return encode_frame(body + b"\x80" * events)


class Connection:
    def __init__(self, host: str, port: int) -> None:
        import socket

        self.sock = socket.create_connection((host, port), timeout=300)
        self.protocol = ClientProtocol(max_frame_size=1 << 30)
        self.read()

    def read(self) -> object:
        while True:
            message = self.protocol.next_event()
            if message is not None:
                return message
            data = self.sock.recv(1 << 16)
            if not data:
                return None
            self.protocol.receive_data(data)

    def call(self, request_id: int, op: str, **args: object) -> object:
        self.sock.sendall(encode_request(request_id, op, args))
        return self.read()


def attack(frames: int, events: int, durable: bool) -> tuple[int, int]:
    """(peak growth, growth after) in bytes."""
    with tempfile.TemporaryDirectory() as tmp, run_server(database=Path(tmp) / "db.dat") as srv:
        conn = Connection(srv.host, srv.port)
        conn.call(1, "auth", user="admin", password="admin")
        conn.call(2, "create_bucket", bucket="b", handler="Count", durable=durable)
        before = rss_bytes(srv.pid)
        conn.sock.sendall(b"".join(_send_frame(events, 10 + i, "b") for i in range(frames)))
        for _ in range(frames):
            if conn.read() is None:
                break
        peak, after = peak_rss_bytes(srv.pid) - before, rss_bytes(srv.pid) - before
        conn.sock.close()
        return peak, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    near = DEFAULT_MAX_FRAME_OBJECTS - 20
    cases = [
        ("16 MiB frame", 1, 16 * MiB - 64, False),
        ("16 x 1 Mi, memory", 16, near, False),
        ("16 x 1 Mi, durable", 16, near, True),
    ]
    print("| attack | peak RSS growth (MiB) | RSS growth after (MiB) |")
    print("|---|---|---|")
    for name, frames, events, durable in cases:
        results = [attack(frames, events, durable) for _ in range(runs)]
        peak = statistics.median(r[0] for r in results) / MiB
        after = statistics.median(r[1] for r in results) / MiB
        print(f"| {name} | {peak:.0f} | {after:.0f} |", flush=True)


if __name__ == "__main__":
    main()
