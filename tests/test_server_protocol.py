"""The bucketly v1 protocol against a live bucketlyd, byte by byte."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from bucketly.protocol import ErrorReply, Greeting, Reply, encode_frame, pack


def test_server_greets_first(raw: Any) -> None:
    conn = raw()
    assert isinstance(conn.greeting, Greeting)
    assert conn.greeting.protocol == 1
    assert conn.greeting.server.startswith("bucketlyd/")


def test_ping_and_hello_work_before_auth(raw: Any) -> None:
    conn = raw()
    assert conn.call(1, "ping").result == "pong"
    hello = conn.call(2, "hello", protocol=1, client="test")
    assert hello.result["authenticated"] is False and hello.result["protocol"] == 1
    error = conn.call(3, "hello", protocol=2)
    assert error.code == "bad_argument"


def test_ops_need_auth(raw: Any) -> None:
    conn = raw()
    for i, (op, args) in enumerate(
        [("send", {"bucket": "b", "event": 1}), ("list_buckets", {}), ("stats", {})]
    ):
        reply = conn.call(i, op, **args)
        assert isinstance(reply, ErrorReply) and reply.code == "auth_required", reply


def test_wrong_password_and_unknown_user_get_the_same_error(raw: Any) -> None:
    conn = raw()
    wrong = conn.call(1, "auth", user="admin", password="nope")
    unknown = conn.call(2, "auth", user="nobody", password="nope")
    assert (
        (wrong.code, wrong.message)
        == (unknown.code, unknown.message)
        == ("auth_failed", "unknown user or wrong password")
    )
    conn.auth()
    assert conn.call(3, "whoami").result["user"] == "admin"


def test_auth_reply_says_to_change_the_default_password(raw: Any) -> None:
    conn = raw()
    assert conn.call(1, "auth", user="admin", password="admin").result == {
        "user": "admin",
        "must_change_password": True,
    }


def test_typed_errors_for_bad_requests(raw: Any) -> None:
    conn = raw()
    conn.auth()
    assert conn.call(1, "create_bucket", bucket="b", handler="Recorder").result["name"] == "b"
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("no_such_op", {}, "unknown_op"),
        ("view", {"bucket": "b"}, "bad_argument"),
        ("view", {"bucket": 5, "view": "count"}, "bad_argument"),
        ("view", {"bucket": "b", "view": "count", "extra": 1}, "bad_argument"),
        ("view", {"bucket": "nope", "view": "count"}, "unknown_bucket"),
        ("view", {"bucket": "b", "view": "nope"}, "unknown_view"),
        ("view", {"bucket": "b", "view": "echo"}, "bad_argument"),
        ("view", {"bucket": "b", "view": "echo", "args": {"value": 1, "x": 2}}, "bad_argument"),
        ("view", {"bucket": "b", "view": "broken"}, "handler_error"),
        ("view", {"bucket": "b", "view": "unencodable"}, "unencodable_result"),
        ("send", {"bucket": "b"}, "bad_argument"),
        ("send", {"bucket": "b", "events": 5}, "bad_argument"),
        ("send", {"bucket": "b", "event": 1, "events": [1]}, "bad_argument"),
        ("send", {"bucket": "b", "event": 1, "ack": "yes"}, "bad_argument"),
        ("send", {"bucket": "b", "event": 1, "other": 1}, "bad_argument"),
        ("send", {"bucket": "nope", "event": 1}, "unknown_bucket"),
        # Arguments are checked before the bucket's existence (docs/protocol.md), for send too.
        ("send", {"bucket": "nope", "event": 1, "ack": 0}, "bad_argument"),
        ("send", {"bucket": "b", "event": 1, "ack": 0}, "bad_argument"),
        ("send", {"bucket": "nope", "events": 5}, "bad_argument"),
        ("send", {"bucket": "nope", "event": 1, "producer": "p"}, "bad_argument"),
        ("send", {"bucket": "b", "event": {"boom": True}}, "handler_error"),
        ("create_bucket", {"bucket": "b", "handler": "Recorder"}, "bucket_exists"),
        ("create_bucket", {"bucket": "c", "handler": "Nope"}, "unknown_handler"),
        ("create_bucket", {"bucket": "bad name!", "handler": "Recorder"}, "bad_argument"),
        ("create_bucket", {"bucket": "x" * 201, "handler": "Recorder"}, "bad_argument"),
        (
            "create_bucket",
            {"bucket": "c", "handler": "Recorder", "config": {"reject": True}},
            "handler_error",
        ),
        ("delete_bucket", {"bucket": "nope"}, "unknown_bucket"),
    ]
    for i, (op, args, code) in enumerate(cases, start=10):
        reply = conn.call(i, op, **args)
        assert isinstance(reply, ErrorReply), (op, args, reply)
        assert reply.code == code, (op, args, reply)
        assert reply.message
    # None of that harmed the bucket or the connection.
    assert conn.call(100, "view", bucket="b", view="count").result == 0
    assert [b["name"] for b in conn.call(101, "list_buckets").result] == ["b"]


def test_handler_error_in_a_batch_says_how_far_it_got(raw: Any) -> None:
    conn = raw()
    conn.auth()
    conn.call(1, "create_bucket", bucket="b", handler="Recorder")
    reply = conn.call(2, "send", bucket="b", events=[1, 2, {"boom": True}, 4])
    assert reply.code == "handler_error" and reply.detail["applied"] == 2
    assert "RuntimeError: boom on purpose" in reply.message
    assert conn.call(3, "view", bucket="b", view="all").result == [1, 2]


def test_undecodable_frames_get_an_error_and_the_connection_goes_on(raw: Any) -> None:
    conn = raw()
    conn.auth()
    for body in [b"\xc1", b"\x92\x01", pack([1, 2, 3]), pack({"op": "ping"}), b"\xa2\xff\xfe"]:
        conn.send_bytes(encode_frame(body))
        error = conn.read()
        assert isinstance(error, ErrorReply) and error.code in ("bad_frame", "bad_request")
        assert error.id is None
    conn.send_bytes(encode_frame(pack({"id": 5, "op": 1})))
    error = conn.read()
    assert (error.id, error.code) == (5, "bad_request")
    assert conn.call(6, "ping").result == "pong"


def test_oversize_frame_gets_an_error_then_the_connection_closes(raw: Any) -> None:
    conn, other = raw(), raw()
    other.auth()
    conn.send_bytes(struct.pack(">I", 0xFFFFFFFF))  # a 4 GiB frame, announced, never sent
    error = conn.read()
    assert (error.id, error.code) == (None, "frame_too_large")
    conn.assert_closed()
    assert other.call(1, "ping").result == "pong"


def test_fire_and_forget_sends(raw: Any) -> None:
    conn = raw()
    conn.auth()
    conn.call(1, "create_bucket", bucket="b", handler="Recorder")
    conn.request(2, "send", bucket="b", event="a", ack=False)
    conn.request(3, "send", bucket="nope", event="b", ack=False)  # fails: still reported
    conn.request(4, "send", bucket="b", events=["c", "d"], ack=False)
    conn.request(5, "view", bucket="b", view="all")
    error = conn.read()
    assert (error.id, error.code) == (3, "unknown_bucket")
    reply = conn.read()
    assert (reply.id, reply.result) == (5, ["a", "c", "d"])


def test_pipelined_replies_come_back_in_request_order(raw: Any) -> None:
    conn = raw()
    conn.auth()
    conn.call(1, "create_bucket", bucket="b", handler="Recorder")
    # An async op (create_bucket writes the database) in the middle of sync ones.
    stream = b"".join(
        [
            encode_frame(pack({"id": 10, "op": "send", "bucket": "b", "event": 1})),
            encode_frame(
                pack({"id": 11, "op": "create_bucket", "bucket": "c", "handler": "Recorder"})
            ),
            encode_frame(pack({"id": 12, "op": "send", "bucket": "c", "event": 2})),
            encode_frame(pack({"id": 13, "op": "view", "bucket": "c", "view": "all"})),
            encode_frame(pack({"id": 14, "op": "ping"})),
        ]
    )
    conn.send_bytes(stream)
    replies = [conn.read() for _ in range(5)]
    assert [r.id for r in replies] == [10, 11, 12, 13, 14]
    assert all(isinstance(r, Reply) for r in replies), replies
    assert replies[3].result == [2]  # the send after the create saw the new bucket


def test_a_frame_trickled_byte_by_byte_is_read(raw: Any) -> None:
    conn = raw()
    frame = encode_frame(pack({"id": 1, "op": "ping"}))
    for byte in frame:
        conn.send_bytes(bytes([byte]))
    assert conn.read().result == "pong"


def test_garbage_on_one_connection_does_not_disturb_another(raw: Any) -> None:
    good, bad = raw(), raw()
    good.auth()
    good.call(1, "create_bucket", bucket="b", handler="Recorder")
    bad.send_bytes(b"\x00\x00\x00\x03\xc1\xc1\xc1" + struct.pack(">I", 0x7FFFFFFF))
    good.call(2, "send", bucket="b", events=list(range(100)))
    assert good.call(3, "view", bucket="b", view="count").result == 100
    bad.assert_closed()


def test_too_many_connections_gets_a_clear_refusal(tmp_path: Any) -> None:
    from bucketly.protocol import ClientProtocol
    from bucketly.testing import run_server

    from .conftest import TEST_HANDLERS, RawConnection

    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat", extra_args=["--max-connections", "2"]
    ) as server:
        # Both slots held by logged-in connections: no slot can be taken back.
        first = RawConnection(server.host, server.port)
        first.auth()
        second = RawConnection(server.host, server.port)
        second.auth()
        sock = socket.create_connection((server.host, server.port), timeout=10)
        protocol = ClientProtocol()
        deadline = time.monotonic() + 10
        message = None
        while message is None and time.monotonic() < deadline:
            data = sock.recv(4096)
            if not data:
                break
            protocol.receive_data(data)
            message = protocol.next_event()
        assert isinstance(message, ErrorReply) and message.code == "too_many_connections"
        assert sock.recv(4096) == b""
        sock.close()
        assert first.call(1, "ping").result == "pong"
        second.close()
        first.close()
        server.wait_for_log("refused connection")
