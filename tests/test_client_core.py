"""``ClientCore`` in memory: batching, settlement, resends, failures, with no socket.

The server's side of each exchange is made with the server's own sans-I/O ``ServerProtocol``, so
these bytes are the bytes a real bucketlyd reads and writes.
"""

from __future__ import annotations

from typing import Any

import pytest

from bucketly.client.common import RESEND_LIMIT
from bucketly.client.core import ClientCore
from bucketly.errors import (
    ConnectionLost,
    ConnectionRefusedByServer,
    LimitExceeded,
    PermissionDenied,
    ProtocolError,
)
from bucketly.protocol import Request, ServerProtocol


class FakeServer:
    """Reads what the core writes; answers with what a test says."""

    def __init__(self) -> None:
        self.protocol = ServerProtocol()
        self.protocol.log_in()

    def requests(self, *frames: bytes) -> list[Request]:
        self.protocol.receive_data(b"".join(frames))
        out = []
        while (request := self.protocol.next_request()) is not None:
            assert isinstance(request, Request)
            out.append(request)
        return out


def _connected() -> tuple[ClientCore, FakeServer]:
    core = ClientCore("test:1")
    core.connection_made()
    assert core.protocol is not None
    core.protocol.receive_data(ServerProtocol().greeting("bucketlyd/test"))
    assert core.greeting() is not None
    return core, FakeServer()


def _fill(core: ClientCore, bucket: str, events: list[Any], now: float = 0.0) -> None:
    assert not core.start_batch(bucket, now)
    core.batch.extend(events)


def test_batches_carry_the_producer_and_consecutive_seqs() -> None:
    core, server = _connected()
    _fill(core, "b", [1, 2, 3])
    _, first = core.take_batch(2)
    _, second = core.take_batch()
    sent = server.requests(first, second)
    assert [r.args["events"] for r in sent] == [[1, 2], [3]]
    assert {r.args["producer"] for r in sent} == {core.resends.producer}
    assert [r.args["seq"] for r in sent] == [1, 2]
    assert len(core.in_flight) == 2 and core.batch == []


def test_another_bucket_asks_for_the_batch_to_be_written_first() -> None:
    core, _ = _connected()
    _fill(core, "a", [1], now=5.0)
    assert core.start_batch("b", 6.0)  # "a" must go first
    core.take_batch()
    assert not core.start_batch("b", 7.0)
    assert core.batch_bucket == "b" and core.due(7.5, 0.05) == pytest.approx(-0.45)


def test_replies_settle_batches_and_errors_wait_for_flush() -> None:
    core, server = _connected()
    _fill(core, "b", [1])
    id1, frame1 = core.take_batch()
    _fill(core, "b", [2])
    id2, frame2 = core.take_batch()
    server.requests(frame1, frame2)
    assert core.protocol is not None
    core.protocol.receive_data(
        server.protocol.reply(id1, {"accepted": 1})
        + server.protocol.error(id2, PermissionDenied("no send on b"))
    )
    assert core.next_reply().id == id1  # type: ignore[union-attr]
    assert core.next_reply().id == id2  # type: ignore[union-attr]
    assert core.next_reply() is None and core.in_flight == {}
    with pytest.raises(PermissionDenied) as failed:
        core.raise_failures()
    assert failed.value.bucket == "b" and failed.value.events == [2]
    core.raise_failures()  # reported once


def test_a_broken_connection_keeps_what_was_in_flight_and_resends_it_first() -> None:
    core, server = _connected()
    _fill(core, "b", ["x"])
    _, frame = core.take_batch()
    (original,) = server.requests(frame)
    lost = core.connection_lost(OSError("reset"))
    assert isinstance(lost, ConnectionLost) and lost.unacknowledged == []
    assert "1 events not acknowledged yet will be resent" in str(lost)
    assert core.protocol is None and core.in_flight == {}
    core.connection_made()
    resend = core.next_resend()
    assert resend is not None and core.next_resend() is None
    (again,) = FakeServer().requests(resend[1])
    assert (again.args["producer"], again.args["seq"], again.args["events"]) == (
        original.args["producer"], original.args["seq"], ["x"]
    )


def test_a_batch_is_given_up_after_resend_limit_broken_connections() -> None:
    core, _ = _connected()
    _fill(core, "b", ["x"])
    core.take_batch()
    for _ in range(RESEND_LIMIT):
        assert core.connection_lost(None).unacknowledged == []
        core.connection_made()
        assert core.next_resend() is not None
    lost = core.connection_lost(None)
    assert lost.unacknowledged == [("b", ["x"])]
    assert core.resends.kept == []


def test_closing_hands_back_everything_not_delivered() -> None:
    core, _ = _connected()
    _fill(core, "b", [1])
    core.take_batch()
    core.connection_lost(None)  # [1] kept for resending
    _fill(core, "c", [2])  # [2] still buffered
    error = core.closing_error(ConnectionLost("gone", unacknowledged=[]))
    assert isinstance(error, ConnectionLost)
    assert error.unacknowledged == [("b", [1]), ("c", [2])]


def test_errors_without_an_id_are_raised_and_a_second_greeting_is_a_protocol_error() -> None:
    core, server = _connected()
    assert core.protocol is not None
    core.protocol.receive_data(
        server.protocol.error(None, LimitExceeded("too much", detail={"limit": "x"}))
    )
    with pytest.raises(LimitExceeded):
        core.next_reply()
    core, _ = _connected()
    assert core.protocol is not None
    core.protocol.receive_data(ServerProtocol().greeting("again"))
    with pytest.raises(ProtocolError):
        core.next_reply()
    refused = ClientCore("test:1")
    refused.connection_made()
    assert refused.protocol is not None
    refused.protocol.receive_data(
        ServerProtocol().error(None, ConnectionRefusedByServer("full"))
    )
    with pytest.raises(ConnectionRefusedByServer):
        refused.greeting()
