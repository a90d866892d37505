"""The bucketly v1 conformance vectors: what they say, how to check a server against them.

``docs/conformance/v1.json`` holds byte-level test vectors: for each case, the exact bytes a
client sends and the exact frames the reference server (this repository's bucketlyd) answered.
docs/protocol.md (section "Conformance") states the rules for using them from another language;
this module is those rules in Python, used by tests/test_conformance.py, and the recipe that wrote
the file::

    python tests/conformance.py --write     # regenerate after a deliberate protocol change

Regenerating is a change to the specification: read the diff of the JSON as such.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ormsgpack

VECTORS = Path(__file__).resolve().parent.parent / "docs" / "conformance" / "v1.json"

#: How long a step waits for the server's next frame, or for it to close the connection.
STEP_TIMEOUT = 10.0
HEADER = 4


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(HEADER, "big") + body


def request(obj: Any) -> bytes:
    return frame(ormsgpack.packb(obj))


def _ping(i: int) -> bytes:
    return request({"id": i, "op": "ping"})


def _auth(i: int, password: str = "admin") -> bytes:
    return request({"id": i, "op": "auth", "user": "admin", "password": password})


# Each case: (name, what it shows, the writes, how many frames the server answers, closes?).
# Cases run in this order, each on a new connection, against one server started on an empty
# database file: a later case may use the bucket an earlier one created.
CASES: list[tuple[str, str, list[bytes], int, bool]] = [
    ("greeting", "The server speaks first: the greeting, and nothing else until asked.",
     [], 0, False),
    ("ping", "The framing example of docs/protocol.md: a ping needs no authentication.",
     [bytes.fromhex("0000000d82a2696401a26f70a470696e67")], 1, False),
    ("hello", "hello before authentication, with the protocol version.",
     [request({"id": 2, "op": "hello", "protocol": 1, "client": "vectors"})], 1, False),
    ("bad_frame_then_ping", "A body that is no MessagePack value (0xc1 is never used) is "
     "bad_frame with id nil, and the connection goes on.",
     [frame(b"\xc1"), _ping(3)], 2, False),
    ("empty_body", "An empty body is bad_frame.", [frame(b""), _ping(4)], 2, False),
    ("extension_type", "An extension type (here a timestamp, ext -1) is bad_frame.",
     [frame(bytes.fromhex("83a2696405a26f70a470696e67a174d6ff00000000")), _ping(5)], 2, False),
    ("not_a_map", "A body that is not a map is bad_request with id nil.",
     [frame(b"\x01"), _ping(6)], 2, False),
    ("float_id", "An id must be an unsigned integer: 1.0 is not, so bad_request with id nil.",
     [request({"id": 1.0, "op": "ping"}), _ping(7)], 2, False),
    ("no_op", "A usable id but no op: bad_request with that id.",
     [request({"id": 8}), _ping(9)], 2, False),
    ("duplicate_ids", "Ids are not checked for uniqueness: each request is answered in order, "
     "with the id it carried.",
     [_ping(10), _ping(10), request({"id": 10, "op": "nope"})], 3, False),
    ("unknown_op_before_auth", "unknown_op is checked before auth_required.",
     [request({"id": 11, "op": "no_such_op"})], 1, False),
    ("auth_required", "Before authentication every op but hello, auth and ping is "
     "auth_required, and the connection stays open.",
     [request({"id": 12, "op": "send", "bucket": "b", "event": 1}), _ping(13)], 2, False),
    ("auth_failed", "A wrong password: auth_failed (the same reply as an unknown user).",
     [_auth(14, "wrong"), request({"id": 15, "op": "auth", "user": "nobody",
                                   "password": "wrong"})], 2, False),
    ("auth_then_work", "auth as the initial admin, then pipelined work on a new bucket: "
     "create, send with and without ack, a view that sees every send before it, argument "
     "errors before existence errors.",
     [_auth(20),
      request({"id": 21, "op": "create_bucket", "bucket": "vectors", "handler": "Count",
               "config": {"key": "url"}}),
      request({"id": 22, "op": "send", "bucket": "vectors", "event": {"url": "/a"}}),
      request({"id": 23, "op": "send", "bucket": "vectors",
               "events": [{"url": "/a"}, {"url": "/b"}, {"url": "/a"}]}),
      request({"id": 24, "op": "send", "bucket": "vectors", "event": {"url": "/c"},
               "ack": False}),
      request({"id": 25, "op": "view", "bucket": "vectors", "view": "count",
               "args": {"value": "/a"}}),
      request({"id": 26, "op": "view", "bucket": "vectors", "view": "count"}),
      request({"id": 27, "op": "send", "bucket": "missing", "event": 1}),
      request({"id": 28, "op": "send", "bucket": "missing", "event": 1, "ack": 0}),
      request({"id": 29, "op": "send", "bucket": "vectors", "event": 1, "ack": 0}),
      request({"id": 30, "op": "send", "bucket": "missing", "event": 1, "ack": False}),
      request({"id": 31, "op": "view", "bucket": "vectors", "view": "nope"}),
      request({"id": 32, "op": "create_bucket", "bucket": "vectors", "handler": "Count"}),
      _ping(33)],
     13, False),
    ("pre_auth_frame_too_large", "Before authentication the largest frame is "
     "--pre-auth-bytes (64 KiB): a longer header is frame_too_large, id nil, and the close.",
     [(65537).to_bytes(HEADER, "big")], 1, True),
    ("frame_too_large", "After authentication a header over --max-frame-size (16 MiB) is "
     "frame_too_large, id nil, and the close.",
     [_auth(40), (16 * 1024 * 1024 + 1).to_bytes(HEADER, "big")], 2, True),
    ("pre_auth_frames", "16 frames before authentication are the budget; the 17th is "
     "limit_exceeded and the close. A failed auth counts as one of them.",
     [_auth(50, "wrong"), *(_ping(51 + i) for i in range(15)), _ping(66)], 17, True),
    ("pre_auth_bytes", "64 KiB before authentication, counted in whole frames: two 30,000-byte "
     "hellos and a ping fit, the next hello would cross the budget: limit_exceeded, not "
     "carried out, and the close.",
     [request({"id": 70, "op": "hello", "client": "c" * 29_974}),
      request({"id": 71, "op": "hello", "client": "c" * 29_974}),
      _ping(72),
      request({"id": 73, "op": "hello", "client": "c" * 29_974})],
     4, True),
]


def normalize(message: Any) -> Any:
    """What the comparison sees of a decoded server frame: wording and versions taken out."""
    if isinstance(message, dict):
        message = dict(message)
        if "bucketly" in message:
            message["server"] = "*"
        error = message.get("error")
        if isinstance(error, dict) and "message" in error:
            message["error"] = {**error, "message": "*"}
        result = message.get("result")
        if isinstance(result, dict) and "created_at" in result:
            message["result"] = {**result, "created_at": "*"}
    return message


class Connection:
    """A plain socket that reads whole frames, and tells a close from a silence."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=STEP_TIMEOUT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes | None:
        """The next whole frame (header included), or None when the server closed."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            if len(self.buffer) >= HEADER:
                end = HEADER + int.from_bytes(self.buffer[:HEADER], "big")
                if len(self.buffer) >= end:
                    data, self.buffer = self.buffer[:end], self.buffer[end:]
                    return data
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk

    def closed(self) -> bool:
        """Whether the server closed the connection (having sent nothing more)."""
        return self.read_frame() is None

    def close(self) -> None:
        self.sock.close()


def record(host: str, port: int) -> list[dict[str, Any]]:
    """Run every case against a server; return the vectors (what it answered, as hex)."""
    vectors = []
    for name, about, writes, replies, closes in CASES:
        conn = Connection(host, port)
        try:
            greeting = conn.read_frame()
            assert greeting is not None, name
            conn.send(b"".join(writes))
            answered = []
            for _ in range(replies):
                data = conn.read_frame()
                assert data is not None, (name, answered)
                answered.append(data.hex())
            if closes:
                assert conn.closed(), name
        finally:
            conn.close()
        vectors.append({
            "name": name,
            "about": about,
            "greeting": greeting.hex(),
            "send": b"".join(writes).hex(),
            "expect": answered,
            "then": "close" if closes else "open",
        })
    return vectors


def check_case(case: dict[str, Any], host: str, port: int) -> None:
    """Check one vector against a running server; raise AssertionError on a difference."""
    conn = Connection(host, port)
    try:
        greeting = conn.read_frame()
        assert greeting is not None, "no greeting"
        assert normalize(decode(greeting)) == normalize(decode(bytes.fromhex(case["greeting"])))
        conn.send(bytes.fromhex(case["send"]))
        for i, expected in enumerate(case["expect"]):
            data = conn.read_frame()
            assert data is not None, f"closed before frame {i}"
            assert normalize(decode(data)) == normalize(decode(bytes.fromhex(expected))), i
        if case["then"] == "close":
            assert conn.closed(), "the connection should have been closed"
        else:
            # Nothing more comes: no reply the vector does not list (e.g. for ack: false).
            conn.send(_ping(999))
            data = conn.read_frame()
            assert data is not None and decode(data) == {"id": 999, "ok": True, "result": "pong"}
    finally:
        conn.close()


def decode(data: bytes) -> Any:
    length = int.from_bytes(data[:HEADER], "big")
    assert length == len(data) - HEADER, "frame length"
    return ormsgpack.unpackb(data[HEADER:], option=ormsgpack.OPT_NON_STR_KEYS)


def load() -> dict[str, Any]:
    return json.loads(VECTORS.read_text())  # type: ignore[no-any-return]


def main() -> None:
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/conformance.py --write")
    from bucketly.testing import run_server

    with tempfile.TemporaryDirectory() as tmp, run_server(database=Path(tmp) / "v.dat") as server:
        document = {
            "protocol": 1,
            "about": (
                "bucketly v1 conformance vectors; the rules are in docs/protocol.md, section "
                "Conformance. Bytes are hex. Each case is one new connection to a server started "
                "with its defaults on an empty database file and the built-in handlers, reached "
                "from a loopback address; cases run in this order."
            ),
            "cases": record(server.host, server.port),
        }
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {len(document['cases'])} cases to {VECTORS}")


if __name__ == "__main__":
    main()
