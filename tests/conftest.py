from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.testing import RunningServer, run_server

HERE = Path(__file__).parent
TEST_HANDLERS = HERE / "handlers_for_tests.py"
EXAMPLE_HANDLERS = HERE.parent / "examples" / "hndlrs.py"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real bucketlyd on a free port, on the test handlers, with its own database file."""
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat") as running:
        yield running


class AsyncProxy:
    """Drives an ``AsyncClient`` from sync test code: one loop in a thread runs every call.

    So a single test body checks both clients (redis-py shares one suite the same way).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        # Given servers=[...], an AsyncShardedClient.
        self._client = bucketly.AsyncClient(*args, **kwargs)
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> AsyncProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest, server: RunningServer) -> Any:
    """``connect(**kwargs)`` -> a Client or an AsyncClient (behind a sync proxy), as admin."""
    opened: list[Any] = []

    def make(user: str | None = "admin", password: str | None = "admin", **kwargs: Any) -> Any:
        if request.param == "sync":
            client: Any = bucketly.Client(
                server.host, server.port, user=user, password=password, **kwargs
            )
        else:
            client = AsyncProxy(server.host, server.port, user=user, password=password, **kwargs)
        opened.append(client)
        return client

    yield make
    for client in opened:
        try:
            client.close()
        except bucketly.BucketlyError:
            pass


@pytest.fixture
def client(connect: Any) -> Any:
    return connect()


class Sink:
    """The TCP service the ``Publisher`` test handler publishes to.

    Each publish is one connection carrying one JSON line; the test decides the answer.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def accept(self, timeout: float = 30.0) -> tuple[socket.socket, list[Any]]:
        """Wait for the next publish; return its connection (answer it!) and its batch."""
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        conn.settimeout(timeout)
        line = conn.makefile().readline()
        return conn, json.loads(line)

    @staticmethod
    def answer(conn: socket.socket, text: str) -> None:
        with conn:
            conn.sendall(text.encode() + b"\n")

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


class RawConnection:
    """A bare socket speaking bucketly v1 by hand, for protocol-level tests."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        from bucketly.protocol import ClientProtocol

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.protocol = ClientProtocol(max_frame_size=1 << 30)
        self.greeting = self.read()

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, request_id: int, op: str, **args: Any) -> None:
        from bucketly.protocol import encode_request

        self.sock.sendall(encode_request(request_id, op, args))

    def read(self) -> Any:
        """The next message from the server (raises on timeout or close)."""
        while True:
            message = self.protocol.next_event()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.protocol.receive_data(data)

    def call(self, request_id: int, op: str, **args: Any) -> Any:
        self.request(request_id, op, **args)
        reply = self.read()
        assert reply.id == request_id
        return reply

    def auth(self, user: str = "admin", password: str = "admin") -> None:
        reply = self.call(999_999, "auth", user=user, password=password)
        assert reply.result["user"] == user, reply

    def assert_closed(self) -> None:
        """The server closes the connection: recv sees EOF (or a reset) before the timeout."""
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not data:
                return
            self.protocol.receive_data(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: RunningServer) -> Iterator[Any]:
    opened: list[RawConnection] = []

    def make() -> RawConnection:
        conn = RawConnection(server.host, server.port)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        conn.close()
