"""Hostile and broken input against a live bucketlyd, and every connection limit.

Each malformed input must get an error reply or a close within a second; the server must stay up,
keep answering other connections, and keep their data. Speed under a flood is measured by
bench/flood_latency.py, not here: these tests only hold the server to a generous deadline.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bucketly.protocol import OPS, ClientProtocol, ErrorReply, encode_frame, encode_request, pack
from bucketly.protocol.connection import MAX_ERROR_MESSAGE
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS, RawConnection

#: Every malformed input is answered (or its connection closed) within this many seconds.
DEADLINE = 1.0
FRAME_TIMEOUT = 0.5
PRE_AUTH_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("hostile")
    with run_server(
        handlers=TEST_HANDLERS,
        database=tmp / "db.dat",
        extra_args=[
            "--frame-timeout", str(FRAME_TIMEOUT),
            "--auth-free-failures", "100000",
            "--max-connections", "4096",
            # Every probe comes from 127.0.0.1: the slots policy has tests of its own
            # (test_admission.py); here floods must not evict the probes.
            "--max-unauthenticated-per-address", "4096",
        ],
    ) as server:
        admin = RawConnection(server.host, server.port)
        admin.auth()
        admin.call(1, "create_bucket", bucket="kept", handler="Recorder")
        admin.call(2, "send", bucket="kept", events=list(range(100)))
        admin.close()
        yield server
        assert server.returncode is None, "the server died"
        for line in server.logs:
            assert "Traceback" not in line and "internal error" not in line, line


class Probe:
    """A raw connection that reports what the server did: replies, and whether it closed."""

    def __init__(self, server: RunningServer, *, auth: bool = False) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.protocol = ClientProtocol(max_frame_size=1 << 30)
        self.closed = False
        greeting = self._next(10)
        assert greeting is not None and not isinstance(greeting, ErrorReply)
        if auth:
            self.sock.sendall(encode_request(0, "auth", {"user": "admin", "password": "admin"}))
            reply = self._next(10)
            assert reply is not None and reply.result["user"] == "admin"

    def _next(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            message = self.protocol.next_event()
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return None
            self.protocol.receive_data(data)

    def outcome(
        self, data: bytes, within: float = DEADLINE, check_close: bool = True
    ) -> tuple[Any, bool]:
        """Send ``data``; return (the first reply within ``within`` s, whether it then closed)."""
        start = time.monotonic()
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
        reply = None if self.closed else self._next(within)
        assert reply is not None or self.closed, f"no reply and no close within {within}s"
        if check_close and not self.closed:
            # A close follows its error right away; give it a moment to show.
            self.sock.settimeout(0.1)
            try:
                if self.sock.recv(65536, socket.MSG_PEEK) == b"":
                    self.closed = True
            except TimeoutError:
                pass
            except ConnectionResetError:
                self.closed = True
        assert time.monotonic() - start < within + 0.5
        return reply, self.closed

    def ping_works(self) -> bool:
        reply, closed = self.outcome(encode_request(424242, "ping", {}), check_close=False)
        return not closed and reply is not None and reply.result == "pong"

    def close(self) -> None:
        self.sock.close()


def _frame(value: Any) -> bytes:
    return encode_frame(pack(value))


# (name, bytes, authenticate first, expected error code(s) or None, connection closed after?)
CASES: list[tuple[str, bytes, bool, str | None, bool]] = [
    ("zero length", b"\x00\x00\x00\x00", False, "bad_frame", False),
    ("4 GiB length", struct.pack(">I", 0xFFFFFFFF), False, "frame_too_large", True),
    ("over the pre-auth frame size", struct.pack(">I", PRE_AUTH_BYTES + 1), False,
     "frame_too_large", True),
    ("2 GiB length after auth", struct.pack(">I", 0x7FFFFFFF), True, "frame_too_large", True),
    ("truncated frame", struct.pack(">I", 100) + b"\x82" * 10, True, "limit_exceeded", True),
    ("truncated header", b"\x00\x00", True, "limit_exceeded", True),
    ("garbage after a valid header", struct.pack(">I", 20) + b"\xc1" * 20, False,
     "bad_frame", False),
    ("truncated MessagePack", encode_frame(b"\x85\xa2id\x01"), False, "bad_frame", False),
    ("array claiming 4 billion items", encode_frame(b"\xdd\xff\xff\xff\xff"), False,
     "bad_frame", False),
    ("map with an unhashable key", encode_frame(b"\x81\x80\x01"), False, "bad_frame", False),
    ("extension type", encode_frame(b"\xd4\x01\x02"), False, "bad_frame", False),
    ("nested 100k deep", encode_frame(b"\x91" * 100_000 + b"\x01"), True, "bad_frame", False),
    ("array body", _frame([1, 2, 3]), False, "bad_request", False),
    ("integer body", _frame(7), False, "bad_request", False),
    ("string body", _frame("ping"), False, "bad_request", False),
    ("nil body", _frame(None), False, "bad_request", False),
    ("binary body", _frame(b"\x00\x01"), False, "bad_request", False),
    ("negative id", _frame({"id": -1, "op": "ping"}), False, "bad_request", False),
    ("id beyond 64 bits", encode_frame(b"\x82\xa2id\xcf" + b"\xff" * 8 + b"\xa2op\xa4ping"),
     False, None, False),
    ("op not a string", _frame({"id": 1, "op": ["ping"]}), False, "bad_request", False),
    ("unknown op", _frame({"id": 1, "op": "drop_tables"}), True, "unknown_op", False),
    ("empty op", _frame({"id": 1, "op": ""}), True, "unknown_op", False),
    ("huge op name", _frame({"id": 1, "op": "x" * 100_000}), True, "unknown_op", False),
    ("invalid UTF-8 op", encode_frame(b"\x82\xa2id\x01\xa2op\xa2\xff\xfe"), False,
     "bad_frame", False),
    ("invalid UTF-8 bucket", encode_frame(
        b"\x84\xa2id\x01\xa2op\xa4send\xa6bucket\xa3\xed\xa0\x80\xa5event\x01"), True,
     "bad_frame", False),
    ("overlong bucket name, send", _frame({"id": 1, "op": "send", "bucket": "x" * 100_000,
                                           "event": 1}), True, "bad_argument", False),
    ("overlong bucket name, view", _frame({"id": 1, "op": "view", "bucket": "y" * 100_000,
                                           "view": "count"}), True, "bad_argument", False),
    ("overlong bucket name, create", _frame({"id": 1, "op": "create_bucket",
                                             "bucket": "z" * 100_000, "handler": "Recorder"}),
     True, "bad_argument", False),
    ("huge unknown argument", _frame({"id": 1, "op": "ping", "k" * 100_000: 1}), True,
     "bad_argument", False),
    ("send before auth", _frame({"id": 1, "op": "send", "bucket": "kept", "event": 1}), False,
     "auth_required", False),
    ("dump before auth", _frame({"id": 1, "op": "dump", "bucket": "kept"}), False,
     "auth_required", False),
    ("enormous password before auth", _frame({"id": 1, "op": "auth", "user": "admin",
                                              "password": "p" * 1_000_000}), False,
     "frame_too_large|limit_exceeded", True),  # whichever the first read shows first
    ("enormous password after auth", _frame({"id": 1, "op": "auth", "user": "admin",
                                             "password": "p" * 1_000_000}), True,
     "auth_failed", False),
    ("enormous new password", _frame({"id": 1, "op": "change_password", "old_password": "x",
                                      "new_password": "p" * 1_000_000}), True,
     "bad_argument", False),
    ("enormous token", _frame({"id": 1, "op": "auth", "token": "t" * 50_000}), False,
     "auth_failed", False),
    ("auth with nothing", _frame({"id": 1, "op": "auth"}), False, "bad_argument", False),
]


@pytest.mark.parametrize(("name", "data", "auth", "code", "closes"), CASES,
                         ids=[case[0] for case in CASES])
def test_malformed_input(
    hostile_server: RunningServer, name: str, data: bytes, auth: bool, code: str | None,
    closes: bool,
) -> None:
    probe = Probe(hostile_server, auth=auth)
    within = FRAME_TIMEOUT + DEADLINE if code and "limit_exceeded" in code else DEADLINE
    try:
        reply, closed = probe.outcome(data, within)
        if code is not None:
            assert isinstance(reply, ErrorReply), reply
            assert reply.code in code.split("|"), reply
            assert len(reply.message) <= MAX_ERROR_MESSAGE + 3
        assert closed == closes, (reply, closed)
        if not closes:
            assert probe.ping_works(), "the connection carries on"
    finally:
        probe.close()
    control = Probe(hostile_server, auth=True)
    try:
        assert control.ping_works(), "the server answers other connections"
        reply, _ = control.outcome(encode_request(1, "view", {"bucket": "kept", "view": "count"}))
        assert reply.result == 100, "and keeps their data"
    finally:
        control.close()


def _wrong_value(kind: str) -> Any:
    return {"str": 1, "int": "1", "number": "1", "bool": 1, "map": [1], "array": {"a": 1}}[kind]


def test_wrong_types_for_every_argument_of_every_op(hostile_server: RunningServer) -> None:
    probe = Probe(hostile_server, auth=True)
    try:
        request_id = 0
        for op in OPS.values():
            valid = {arg.name: _valid_value(arg.type) for arg in op.args if arg.required}
            for arg in op.args:
                if arg.type == "any":
                    continue
                request_id += 1
                args = {**valid, arg.name: _wrong_value(arg.type)}
                reply, closed = probe.outcome(
                    encode_request(request_id, op.name, args), check_close=False
                )
                assert not closed
                assert isinstance(reply, ErrorReply) and reply.code == "bad_argument", (
                    op.name, arg.name, reply)
                assert reply.id == request_id
            # Optional arguments may be absent, but not nil.
            for arg in op.args:
                if not arg.required and arg.type != "any":
                    request_id += 1
                    reply, _ = probe.outcome(
                        encode_request(request_id, op.name, {**valid, arg.name: None}),
                        check_close=False,
                    )
                    assert reply.code == "bad_argument", (op.name, arg.name, reply)
        assert probe.ping_works()
    finally:
        probe.close()


def _valid_value(kind: str) -> Any:
    return {"str": "kept", "int": 1, "bool": True, "map": {}, "array": [], "any": 1}[kind]


def test_commands_before_auth_then_the_frame_budget(hostile_server: RunningServer) -> None:
    probe = Probe(hostile_server)
    try:
        for i, op in enumerate(name for name, op in OPS.items() if op.scope != "none"):
            if i >= 16:
                break
            reply, closed = probe.outcome(encode_request(i, op, {}))
            assert not closed and reply.code in ("auth_required", "bad_argument"), (op, reply)
        # 16 frames before auth is the budget: the next one closes the connection.
        reply, closed = probe.outcome(encode_request(99, "ping", {}))
        assert (reply.code, reply.detail, closed) == (
            "limit_exceeded", {"limit": "pre_auth_frames"}, True)
    finally:
        probe.close()


def test_pre_auth_byte_budget(hostile_server: RunningServer) -> None:
    probe = Probe(hostile_server)
    try:
        big_hello = _frame({"id": 1, "op": "hello", "client": "c" * 40_000})
        reply, closed = probe.outcome(big_hello)
        assert not closed and reply.result["authenticated"] is False
        # The frame that would cross the budget is not carried out: the connection is closed.
        reply, closed = probe.outcome(big_hello)
        assert (reply.code, reply.detail, closed) == (
            "limit_exceeded", {"limit": "pre_auth_bytes"}, True)
    finally:
        probe.close()


@pytest.mark.parametrize("cut", [None, 1, 4096])
def test_pre_auth_byte_budget_counts_whole_frames_however_the_stream_is_cut(
    hostile_server: RunningServer, cut: int | None
) -> None:
    """What runs depends on the frames, not on how TCP cut them: within the budget, or not."""
    probe = Probe(hostile_server)
    try:
        hello = _frame({"id": 1, "op": "hello", "client": "c" * 30_000})
        ping = encode_request(2, "ping", {})
        fits = hello + hello + ping
        assert len(fits) < PRE_AUTH_BYTES < len(fits) + len(hello)
        if cut is None:
            # All at once: the three that fit are carried out, the one that crosses is not.
            probe.sock.sendall(fits + hello)
        else:
            # In pieces: a frame counts when it is whole, wherever the reads cut it.
            for start in range(0, len(fits), cut):
                probe.sock.sendall(fits[start : start + cut])
        replies = [probe._next(DEADLINE) for _ in range(3)]
        assert [r.result["authenticated"] for r in replies[:2]] == [False, False]
        assert replies[2].result == "pong"
        if cut is not None:
            # The last frame is sent whole: the server closes once it has read all of it, so
            # its reply is not lost to a reset of data it never read.
            probe.sock.sendall(hello)
        reply = probe._next(DEADLINE)
        assert (reply.code, reply.detail) == ("limit_exceeded", {"limit": "pre_auth_bytes"})
        assert probe._next(DEADLINE) is None and probe.closed
    finally:
        probe.close()


def test_pipelining_after_auth_is_not_held_against_the_budget(
    hostile_server: RunningServer,
) -> None:
    """Requests sent right behind the auth, before its reply, are fine, however many."""
    probe = Probe(hostile_server)
    try:
        stream = encode_request(1, "auth", {"user": "admin", "password": "admin"}) + b"".join(
            encode_request(i, "send", {"bucket": "kept", "events": ["x" * 100] * 10, "ack": False})
            for i in range(2, 200)
        ) + encode_request(500, "ping", {})
        assert len(stream) > 2 * PRE_AUTH_BYTES
        probe.sock.sendall(stream)
        replies = [probe._next(DEADLINE), probe._next(DEADLINE)]
        assert [getattr(r, "result", r) for r in replies] == [
            {"user": "admin", "must_change_password": True}, "pong"]
    finally:
        probe.close()
    admin = Probe(hostile_server, auth=True)
    try:
        admin.outcome(encode_request(1, "delete_bucket", {"bucket": "kept"}))
        admin.outcome(encode_request(2, "create_bucket", {"bucket": "kept", "handler": "Recorder"}))
        admin.outcome(encode_request(3, "send", {"bucket": "kept", "events": list(range(100))}))
    finally:
        admin.close()


def test_slowloris_trickle_is_cut_off(hostile_server: RunningServer) -> None:
    """Bytes keep coming, but the frame does not finish within --frame-timeout."""
    probe = Probe(hostile_server, auth=True)
    frame = _frame({"id": 1, "op": "ping", "pad": "x" * 100})
    start = time.monotonic()
    try:
        for byte in frame:
            probe.sock.sendall(bytes([byte]))
            # The server answers (and ends its side) once the frame is too slow: stop there.
            if select.select([probe.sock], [], [], 0.02)[0]:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = probe._next(DEADLINE)
    assert probe.closed or (reply is not None and reply.code == "limit_exceeded")
    assert time.monotonic() - start < FRAME_TIMEOUT + 2 * DEADLINE
    probe.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=4), st.booleans())
def test_live_fuzz(hostile_server: RunningServer, chunks: list[bytes], auth: bool) -> None:
    """Random bytes, some behind valid headers, against a live server: never an internal error."""
    probe = Probe(hostile_server, auth=auth)
    try:
        for chunk in chunks:
            data = encode_frame(chunk) if len(chunk) % 2 else chunk
            try:
                probe.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                break
        probe.sock.settimeout(0.05)
        try:
            while (data := probe.sock.recv(65536)):
                probe.protocol.receive_data(data)
        except (TimeoutError, ConnectionResetError):
            pass
        while (message := probe.protocol.next_event()) is not None:
            assert not (isinstance(message, ErrorReply) and message.code == "internal_error")
    finally:
        probe.close()


def test_the_server_survives_the_suite(hostile_server: RunningServer) -> None:
    control = Probe(hostile_server, auth=True)
    try:
        assert control.ping_works()
        reply, _ = control.outcome(encode_request(1, "stats", {}))
        assert reply.result["buckets"]["kept"]["events"] >= 100
    finally:
        control.close()


# -- limits that need their own settings ----------------------------------------------------------


def test_auth_timeout(tmp_path: Path) -> None:
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--auth-timeout", "0.5"]) as server:
        idle = Probe(server)
        logged_in = Probe(server, auth=True)
        start = time.monotonic()
        reply = idle._next(3)
        assert (reply.code, reply.detail) == ("limit_exceeded", {"limit": "auth_timeout"})
        assert idle._next(1) is None and idle.closed
        assert 0.4 < time.monotonic() - start < 0.5 + DEADLINE
        time.sleep(0.5)
        assert logged_in.ping_works(), "an authenticated connection has no idle timeout"
        # A failed login makes the connection unauthenticated again: the clock restarts.
        reply, _ = logged_in.outcome(encode_request(1, "auth", {"user": "admin", "password": "x"}))
        assert reply.code == "auth_failed"
        reply = logged_in._next(3)
        assert reply is not None and reply.detail == {"limit": "auth_timeout"}
        idle.close()
        logged_in.close()
        server.wait_for_log(r"closing connection from .*not authenticated within 0.5 seconds")


def test_max_write_buffer_drops_a_client_that_does_not_read(tmp_path: Path) -> None:
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--max-write-buffer", str(1 << 20)]) as server:
        admin = RawConnection(server.host, server.port)
        admin.auth()
        admin.call(1, "create_bucket", bucket="big", handler="Recorder")
        admin.call(2, "send", bucket="big", events=["e" * 1000] * 100)  # ~100 KB per dump
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        sock.sendall(encode_request(1, "auth", {"user": "admin", "password": "admin"}))
        time.sleep(0.2)
        # 2,000 dumps (~200 MB of replies) that this client will never read.
        sock.sendall(b"".join(encode_request(i, "dump", {"bucket": "big"}) for i in range(2000)))
        server.wait_for_log(r"dropping connection from .*not read \(--max-write-buffer 1048576\)")
        # Only that client: the others carry on, and the server holds no 200 MB for it.
        assert admin.call(3, "view", bucket="big", view="count").result == 100
        assert admin.call(4, "stats").result["connections"] == 1
        entries = admin.call(5, "audit").result
        assert any(e["event"] == "connection_dropped" for e in entries)
        sock.close()
        admin.close()


def test_a_slow_reader_within_the_cap_is_kept(tmp_path: Path) -> None:
    """One large reply always fits, however large; the client gets it all once it reads."""
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--max-write-buffer", str(1 << 16)]) as server:
        conn = RawConnection(server.host, server.port)
        conn.auth()
        conn.call(1, "create_bucket", bucket="big", handler="Recorder")
        conn.call(2, "send", bucket="big", events=["e" * 1000] * 1000)  # a ~1 MB dump
        time.sleep(0.5)
        assert len(conn.call(3, "dump", bucket="big").result["events"]) == 1000
        conn.close()


def test_many_connections_flooding_garbage_do_not_stop_others(
    hostile_server: RunningServer,
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def flood() -> None:
        payloads = [b"\x00\x00\x00\x00", struct.pack(">I", 0xFFFFFFFF), _frame([1]),
                    _frame({"id": 1, "op": "auth", "user": "admin", "password": "wrong"})]
        i = 0
        while not stop.is_set():
            try:
                with socket.create_connection((hostile_server.host, hostile_server.port), 5) as s:
                    s.sendall(payloads[i % len(payloads)] * 20)
                    i += 1
            except OSError as exc:  # refused, reset: the server may close on us
                errors.append(exc)

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    control = Probe(hostile_server, auth=True)
    try:
        worst = 0.0
        for _ in range(50):
            start = time.perf_counter()
            assert control.ping_works()
            worst = max(worst, time.perf_counter() - start)
        assert worst < DEADLINE
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        control.close()
