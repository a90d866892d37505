"""The server's connection driven in memory: a real ``Server`` and database file, a fake transport.

No socket carries these bytes: each test hands ``ServerConnection.data_received`` exactly the
chunks it wants and reads what the connection wrote, so pipelining, fairness and the budgets
before authentication are checked without the kernel's timing in between. The sans-I/O budgets
themselves (``ServerProtocol``, with the time passed in) are tested at the bottom.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bucketly.errors import LimitExceeded
from bucketly.protocol import ClientProtocol, ErrorReply, Greeting, ServerProtocol, encode_request
from bucketly.server.config import ServerConfig
from bucketly.server.connection import ServerConnection
from bucketly.server.flow import FRAME_COST, WORK_PER_TURN
from bucketly.server.metrics import Collector
from bucketly.server.server import Server

from .conftest import TEST_HANDLERS


class FakeTransport(asyncio.Transport):
    """Collects what the connection writes; records whether it reads, and how it closed."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.peer = peer
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.eof = False
        self._decoder = ClientProtocol(max_frame_size=1 << 30)
        self.protocol: asyncio.Protocol | None = None

    def _lost(self) -> None:
        """The peer is gone: as a real transport, tell the protocol, once, on the next turn."""
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self.peer}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed and not self.eof, "written after the close"
        self.written += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True
        self._lost()  # this peer closes its side when the server does

    def close(self) -> None:
        self.closed = True
        self._lost()

    def abort(self) -> None:
        self.closed = True
        self._lost()

    def is_closing(self) -> bool:
        return self.closed or self.eof

    def messages(self) -> list[Any]:
        """Every message written since the last call, the greeting left out."""
        self._decoder.receive_data(bytes(self.written))
        self.written.clear()
        out = []
        while (message := self._decoder.next_event()) is not None:
            if not isinstance(message, Greeting):
                out.append(message)
        return out


@pytest.fixture
def tmp_db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "db.dat"


async def _server(db: Path, **options: Any) -> Server:
    config = ServerConfig(
        database=str(db), bucket_handlers=str(TEST_HANDLERS), port=0, **options
    )
    server = Server(config)
    await server.start()
    return server


@pytest.fixture
def run(tmp_db: Path) -> Callable[..., Any]:
    """``run(body, **options)``: run ``await body(server, connect)`` against a fresh server."""

    def runner(body: Callable[..., Any], **options: Any) -> Any:
        async def main() -> Any:
            server = await _server(tmp_db, **options)
            try:
                return await body(server, lambda **kw: _connect(server, **kw))
            finally:
                await server.shutdown()

        return asyncio.run(main())

    return runner


def _connect(server: Server, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> Any:
    conn = ServerConnection(server)
    transport = FakeTransport(peer)
    transport.protocol = conn
    conn.connection_made(transport)
    return conn, transport


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Let the loop run until ``condition()`` (an auth hashes a password in a thread)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


async def _logged_in(server: Server) -> tuple[ServerConnection, FakeTransport]:
    conn, transport = _connect(server)
    conn.data_received(encode_request(0, "auth", {"user": "admin", "password": "admin"}))
    await _until(lambda: conn.busy is None and conn.user is not None)
    assert [m.id for m in transport.messages()] == [0]
    return conn, transport


# -- before authentication ------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_the_frame_beyond_the_frame_budget_is_refused_however_the_stream_is_cut(
    run: Callable[..., Any], chunk: int | None
) -> None:
    async def body(server: Server, connect: Any) -> None:
        conn, transport = connect()
        stream = b"".join(encode_request(i, "ping", {}) for i in range(1, 21))
        pieces = [stream] if chunk is None else [
            stream[i : i + chunk] for i in range(0, len(stream), chunk)
        ]
        for piece in pieces:
            if conn.closed:
                break
            conn.data_received(piece)
        messages = transport.messages()
        assert [m.id for m in messages[:16]] == list(range(1, 17))
        assert all(m.result == "pong" for m in messages[:16])
        refused = messages[16]
        assert isinstance(refused, ErrorReply) and refused.code == "limit_exceeded"
        assert refused.id is None and refused.detail == {"limit": "pre_auth_frames"}
        assert len(messages) == 17 and conn.closed

    run(body)


def test_the_byte_budget_counts_a_frame_still_arriving(run: Callable[..., Any]) -> None:
    async def body(server: Server, connect: Any) -> None:
        conn, transport = connect()
        ping = encode_request(1, "ping", {})
        fill = encode_request(2, "ping", {"pad": "x" * 900})
        fill = encode_request(2, "ping", {"pad": "x" * (900 + 1000 - len(ping) - len(fill))})
        assert len(ping) + len(fill) == 1000
        conn.data_received(ping)
        conn.data_received(fill)  # the budget to the byte: both carried out
        assert [m.id for m in transport.messages()] == [1, 2] and not conn.closed
        # The first bytes of one more frame: over the budget before the frame is complete.
        conn.data_received(encode_request(3, "ping", {})[:6])
        (refused,) = transport.messages()
        assert refused.code == "limit_exceeded", refused
        assert refused.detail == {"limit": "pre_auth_bytes"} and conn.closed

    run(body, pre_auth_bytes=1000)


def test_requests_right_behind_an_auth_wait_for_it_and_are_not_counted(
    run: Callable[..., Any],
) -> None:
    async def body(server: Server, connect: Any) -> None:
        conn, transport = connect()
        stream = encode_request(1, "auth", {"user": "admin", "password": "admin"})
        stream += b"".join(encode_request(i, "ping", {}) for i in range(2, 40))
        conn.data_received(stream)
        assert conn.busy is not None  # hashing the password: the pings wait unread
        await _until(lambda: len(transport.written) > 0 and conn.busy is None)
        await _until(lambda: not conn.flow.yielded)
        messages = transport.messages()
        assert [m.id for m in messages] == list(range(1, 40)) and not conn.closed

    run(body)


def test_an_unauthenticated_connection_expires_by_the_clock_it_is_given(
    run: Callable[..., Any],
) -> None:
    async def body(server: Server, connect: Any) -> None:
        conn, transport = connect()
        since = conn.protocol.unauthenticated_since
        conn.check_timeouts(since + 4.9)
        assert not conn.closed
        conn.check_timeouts(since + 5.1)
        (refused,) = transport.messages()
        assert refused.detail == {"limit": "auth_timeout"} and conn.closed

    run(body, auth_timeout=5.0)


# -- after authentication -------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_each_seeing_those_before(
    run: Callable[..., Any],
) -> None:
    async def body(server: Server, connect: Any) -> None:
        conn, transport = await _logged_in(server)
        conn.data_received(
            encode_request(1, "create_bucket", {"bucket": "b", "handler": "Recorder"})
            + encode_request(2, "send", {"bucket": "b", "events": [1, 2]})
            + encode_request(3, "view", {"bucket": "b", "view": "all"})
            + encode_request(4, "send", {"bucket": "b", "event": 3})
            + encode_request(5, "view", {"bucket": "b", "view": "all"})
        )
        await _until(lambda: conn.busy is None and len(transport.written) > 0)
        await asyncio.sleep(0)
        messages = transport.messages()
        assert [m.id for m in messages] == [1, 2, 3, 4, 5]
        assert messages[2].result == [1, 2] and messages[4].result == [1, 2, 3]

    run(body)


def test_durable_sends_are_pipelined_and_acknowledged_in_order(run: Callable[..., Any]) -> None:
    async def body(server: Server, connect: Any) -> None:
        conn, transport = await _logged_in(server)
        conn.data_received(encode_request(
            1, "create_bucket", {"bucket": "d", "handler": "Recorder", "durable": True}
        ))
        await _until(lambda: conn.busy is None)
        transport.messages()
        commits = server.durable.commits
        sends = b"".join(
            encode_request(i, "send", {"bucket": "d", "events": [i]}) for i in range(2, 42)
        )
        conn.data_received(sends + encode_request(42, "view", {"bucket": "d", "view": "all"}))
        await _until(lambda: conn.busy is None and conn._held is None)
        messages = transport.messages()
        assert [m.id for m in messages] == list(range(2, 43))
        assert messages[-1].result == list(range(2, 42))  # the view waited for every commit
        # Read in one go, the 40 sends shared commits (group commit): fewer than one each.
        assert server.durable.commits - commits < 40

    run(body)


def test_one_connection_yields_its_turn_after_its_share_of_work(run: Callable[..., Any]) -> None:
    async def body(server: Server, connect: Any) -> None:
        busy, busy_out = await _logged_in(server)
        other, other_out = await _logged_in(server)
        frames = 4 * WORK_PER_TURN // FRAME_COST
        busy.data_received(b"".join(encode_request(i, "ping", {}) for i in range(frames)))
        per_turn = WORK_PER_TURN // FRAME_COST
        assert len(busy_out.messages()) == per_turn
        assert not busy_out.reading  # it waits for its next turn
        other.data_received(encode_request(7, "ping", {}))
        assert [m.id for m in other_out.messages()] == [7]  # served between the turns
        await _until(lambda: busy_out.reading)
        assert len(busy_out.messages()) == frames - per_turn

    run(body)


def _waiting(server: Server) -> dict[str, float]:
    """``bucketly_requests_waiting`` as the metrics endpoint would export it now."""
    (family,) = [f for f in Collector(server).collect() if f.name == "bucketly_requests_waiting"]
    return {sample.labels["wait"]: sample.value for sample in family.samples}


def test_a_connection_waiting_for_its_turn_is_counted_in_the_metrics(
    run: Callable[..., Any],
) -> None:
    async def body(server: Server, connect: Any) -> None:
        busy, busy_out = await _logged_in(server)
        assert _waiting(server) == {"bucket_queue": 0, "commit": 0, "pipeline": 0, "turn": 0}
        frames = 4 * WORK_PER_TURN // FRAME_COST
        busy.data_received(b"".join(encode_request(i, "ping", {}) for i in range(frames)))
        assert list(busy.waits()) == ["turn"]
        assert _waiting(server)["turn"] == 1
        await _until(lambda: busy_out.reading)
        assert _waiting(server)["turn"] == 0
        assert len(busy_out.messages()) == frames

    run(body)


# -- the sans-I/O budgets ---------------------------------------------------------------------


def test_the_protocol_counts_whole_frames_and_lifts_the_budgets_at_log_in() -> None:
    protocol = ServerProtocol(pre_auth_frames=2, pre_auth_bytes=10_000, now=100.0)
    for i in range(1, 4):
        protocol.receive_data(encode_request(i, "ping", {}))
    assert protocol.next_request().id == 1  # type: ignore[union-attr]
    protocol.log_in()
    assert protocol.next_request().id == 2  # type: ignore[union-attr]
    assert protocol.next_request().id == 3  # type: ignore[union-attr]
    assert protocol.max_frame_size > 10_000
    protocol.log_out(now=200.0)
    assert protocol.max_frame_size == 10_000
    assert not protocol.auth_expired(200.0 + protocol.auth_timeout)
    assert protocol.auth_expired(200.1 + protocol.auth_timeout)
    protocol.receive_data(encode_request(4, "ping", {}) + encode_request(5, "ping", {}))
    assert protocol.next_request().id == 4  # type: ignore[union-attr]
    with pytest.raises(LimitExceeded) as refused:  # the budget went on: frames 1 and 4 counted
        protocol.next_request()
    assert refused.value.detail == {"limit": "pre_auth_frames"}

