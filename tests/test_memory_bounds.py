"""What an authenticated sender can make bucketlyd hold in memory (issue 17, item 2).

MessagePack is compact: an empty map is one byte on the wire and 72 in memory. Before the bounds
here, one 16 MiB frame of empty maps took the server from 119 to 1,222 MiB, and 16 pipelined
frames to a durable bucket peaked at 3,345 MiB. Each test sends those frames to a real bucketlyd
with its default limits, reads the server's peak RSS (``VmHWM``) from /proc, and holds it to the
bound docs/security.md states, while another client keeps working.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import ormsgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketly.errors import LimitExceeded
from bucketly.protocol import ServerProtocol, encode_frame, pack
from bucketly.protocol.limits import DEFAULT_MAX_FRAME_OBJECTS, OBJECT_COST, _count, object_bound
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS, RawConnection

MiB = 1024 * 1024


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _send_frame(events: int, request_id: int, bucket: str) -> bytes:
    """A send of ``events`` empty maps, encoded by hand (nothing builds them in the test)."""
    head = pack({"id": request_id, "op": "send", "bucket": bucket})
    # The request map gets one more entry: "events", an array32 of empty maps.
    body = bytes([head[0] + 1]) + head[1:] + pack("events") + b"\xdd" + struct.pack(">I", events)
    return encode_frame(body + b"\x80" * events)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat") as running:
        admin = RawConnection(running.host, running.port)
        admin.auth()
        admin.call(1, "create_bucket", bucket="mem", handler="BatchCounter")
        admin.call(2, "create_bucket", bucket="disk", handler="BatchCounter", durable=True)
        admin.close()
        yield running


def _other_client_works(server: RunningServer, bucket: str) -> None:
    other = RawConnection(server.host, server.port)
    other.auth()
    assert other.call(1, "ping").result is not None
    assert other.call(2, "send", bucket=bucket, events=[1, 2, 3]).result["accepted"] == 3
    other.close()


def test_a_frame_of_too_many_values_is_refused_before_it_is_decoded(
    server: RunningServer,
) -> None:
    before = _rss(server.pid, "VmRSS")
    attacker = RawConnection(server.host, server.port)
    attacker.auth()
    attacker.send_bytes(_send_frame(16 * MiB - 64, 1, "mem"))
    reply = attacker.read()
    assert reply.id is None and reply.code == "limit_exceeded", reply
    assert reply.detail == {"limit": "max_frame_objects"}
    attacker.assert_closed()
    attacker.close()
    # Decoded, these 16 Mi maps would take 1,150 MiB: the server only ever held the frame.
    grown = _rss(server.pid, "VmHWM") - before
    assert grown < 3 * 16 * MiB + 32 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
    _other_client_works(server, "mem")
    server.wait_for_log("max-frame-objects")


def test_a_frame_within_the_limit_is_taken(server: RunningServer) -> None:
    client = RawConnection(server.host, server.port)
    client.auth()
    # A send map holds a few values besides its events (its keys, id, op, bucket...).
    client.send_bytes(_send_frame(DEFAULT_MAX_FRAME_OBJECTS - 20, 1, "mem"))
    assert client.read().result == {"accepted": DEFAULT_MAX_FRAME_OBJECTS - 20}
    client.send_bytes(_send_frame(DEFAULT_MAX_FRAME_OBJECTS, 2, "mem"))
    assert client.read().code == "limit_exceeded"
    client.close()


def test_pipelined_durable_sends_hold_at_most_the_connection_queue(
    server: RunningServer,
) -> None:
    """16 pipelined frames of a million empty maps each to a durable bucket: decoded and held
    until their commits, as before, they would take 16 x 72 MiB; the connection is read only
    while its queued sends cost less than --max-connection-queue (64 MiB)."""
    before = _rss(server.pid, "VmRSS")
    frames = 16
    events = DEFAULT_MAX_FRAME_OBJECTS - 20
    sender = RawConnection(server.host, server.port, timeout=120)
    sender.auth()
    sender.send_bytes(b"".join(_send_frame(events, 1 + i, "disk") for i in range(frames)))
    replies = [sender.read() for _ in range(frames)]
    assert [r.id for r in replies] == list(range(1, frames + 1))
    assert all(r.result == {"accepted": events} for r in replies), replies[0]
    peak = _rss(server.pid, "VmHWM") - before
    # One frame being decoded (its bytes, ~73 MiB decoded), one queued for its commit (its cost
    # lets no second one in), and the read buffer: docs/security.md, "Memory".
    one = events * OBJECT_COST + 2 * events
    assert peak < 2 * one + 3 * 16 * MiB, f"peak RSS grew by {peak / MiB:.0f} MiB"
    sender.close()
    _other_client_works(server, "disk")
    total = RawConnection(server.host, server.port)
    total.auth()
    assert total.call(1, "view", bucket="disk", view="stats").result["total"] == frames * events + 3
    total.close()


def test_a_full_durable_bucket_makes_its_senders_wait_not_fail(tmp_path: Path) -> None:
    """With --max-bucket-queue small, sends from several connections to one durable bucket
    wait for room and are all acknowledged, in order, none refused or lost."""
    with run_server(
        handlers=TEST_HANDLERS,
        database=tmp_path / "db.dat",
        extra_args=["--max-bucket-queue", "1000000", "--max-connection-queue", "1000000"],
    ) as server:
        admin = RawConnection(server.host, server.port)
        admin.auth()
        admin.call(1, "create_bucket", bucket="disk", handler="Recorder", durable=True)
        senders = []
        for n in range(4):
            conn = RawConnection(server.host, server.port)
            conn.auth()
            # Each frame costs some 200 kB: the bucket's queue is full after five of them.
            conn.send_bytes(b"".join(
                encode_frame(pack({"id": i, "op": "send", "bucket": "disk",
                                   "events": [[n, i]] + [None] * 2000}))
                for i in range(1, 21)
            ))
            senders.append(conn)
        for conn in senders:
            replies = [conn.read() for _ in range(20)]
            assert [r.id for r in replies] == list(range(1, 21))
            assert all(r.result == {"accepted": 2001} for r in replies), replies
        events = admin.call(2, "view", bucket="disk", view="all").result
        marks = [e for e in events if e is not None]
        assert len(marks) == 80
        for n in range(4):
            assert [i for m, i in marks if m == n] == list(range(1, 21))
        for conn in [admin, *senders]:
            conn.close()


# -- counting without decoding --------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=5),
    max_leaves=60,
)


def _values_in(value: object) -> int:
    if isinstance(value, list):
        return 1 + sum(_values_in(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(_values_in(k) + _values_in(v) for k, v in value.items())
    return 1


@settings(max_examples=300, deadline=None)
@given(values)
def test_the_count_is_exact_natively_and_in_python(value: object) -> None:
    data = ormsgpack.packb(value)
    expected = _values_in(value)
    assert _count(data, 10**9) == expected
    assert object_bound(data, 10**9) == expected
    assert _count(data, expected - 1) == expected
    if expected > 1:
        assert _count(data, expected - 1) == expected  # limit + 1 once over the limit
        assert object_bound(data, expected - 1) == expected


@pytest.mark.parametrize("data", [b"", b"\x92\x01", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xdb\x00"])
def test_malformed_data_counts_as_its_length(data: bytes) -> None:
    assert _count(data, 100) == -1
    assert object_bound(data, 100) == len(data)


def test_the_sans_io_protocol_refuses_the_frame_and_every_later_one() -> None:
    protocol = ServerProtocol(max_frame_objects=10)
    protocol.receive_data(encode_frame(pack({"id": 1, "op": "ping"})))
    protocol.receive_data(encode_frame(pack({"id": 2, "op": "send", "events": [{}] * 20})))
    protocol.receive_data(encode_frame(pack({"id": 3, "op": "ping"})))
    first = protocol.next_request()
    assert first is not None and first.id == 1  # type: ignore[union-attr]
    for _ in range(2):
        with pytest.raises(LimitExceeded) as refused:
            protocol.next_request()
        assert refused.value.detail == {"limit": "max_frame_objects"}


def test_nesting_deeper_than_the_decoder_takes_is_a_bad_frame_not_a_crash(
    server: RunningServer,
) -> None:
    client = RawConnection(server.host, server.port)
    client.auth()
    head = pack({"id": 1, "op": "send", "bucket": "mem"})
    body = bytes([head[0] + 1]) + head[1:] + pack("events") + b"\x91" * 5000 + b"\xc0"
    client.send_bytes(encode_frame(body))
    reply = client.read()
    assert reply.code == "bad_frame", reply
    assert client.call(2, "ping").result is not None  # the connection goes on
    client.close()
