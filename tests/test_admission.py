"""Connection slots against a real bucketlyd: no one can take them without credentials.

The policy is in src/bucketly/server/admission.py and docs/security.md ("Connection slots").
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bucketly.protocol import ClientProtocol, ErrorReply, Greeting, encode_request
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS

ATTACKER = "127.0.0.1"
GOOD = "127.0.0.2"
MAX_CONNECTIONS = 40
RESERVED = 8
PER_ADDRESS = 6


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(
        handlers=TEST_HANDLERS,
        database=tmp_path / "db.dat",
        extra_args=[
            "--hostname", "0.0.0.0",  # reachable from every loopback address
            "--max-connections", str(MAX_CONNECTIONS),
            "--reserved-connections", str(RESERVED),
            "--max-unauthenticated-per-address", str(PER_ADDRESS),
            "--auth-timeout", "10",
        ],
    ) as running:
        yield running


class Conn:
    """A raw connection from a chosen loopback address."""

    def __init__(self, server: RunningServer, source: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                             source_address=(source, 0))
        self.protocol = ClientProtocol()
        self.first = self.read()

    def read(self) -> Any:
        while True:
            message = self.protocol.next_event()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.protocol.receive_data(data)

    def login(self) -> Any:
        self.sock.sendall(encode_request(1, "auth", {"user": "admin", "password": "admin"}))
        return self.read()

    def close(self) -> None:
        self.sock.close()


def test_a_flood_from_one_address_leaves_every_good_login_working(
    server: RunningServer,
) -> None:
    stop = threading.Event()
    opened = [0]

    def flood() -> None:
        held: list[socket.socket] = []
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                                     source_address=(ATTACKER, 0)))
                opened[0] += 1
            except OSError:
                pass
            if len(held) > 3 * MAX_CONNECTIONS:
                held.pop(0).close()
        for sock in held:
            sock.close()

    threads = [threading.Thread(target=flood) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        while opened[0] < 2 * MAX_CONNECTIONS:  # the flood is on: every slot would be taken
            time.sleep(0.01)
        results = []
        for _ in range(20):
            good = Conn(server, GOOD)
            results.append((type(good.first).__name__, good.login()))
            good.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert all(kind == "Greeting" for kind, _ in results), results
    assert all(r is not None and not isinstance(r, ErrorReply) for _, r in results), results
    assert opened[0] >= 2 * MAX_CONNECTIONS


def test_one_address_holds_at_most_its_share_and_the_oldest_gives_way(
    server: RunningServer,
) -> None:
    conns = [Conn(server, ATTACKER) for _ in range(PER_ADDRESS)]
    assert all(isinstance(c.first, Greeting) for c in conns)
    newcomer = Conn(server, ATTACKER)
    assert isinstance(newcomer.first, Greeting)
    evicted = conns[0].read()
    assert (evicted.code, evicted.detail) == (
        "limit_exceeded", {"limit": "max_unauthenticated_per_address"})
    assert conns[0].read() is None  # closed
    for conn in conns[1:]:  # the others are untouched: they can still log in
        assert conn.login().result["user"] == "admin"
    newcomer.close()
    for conn in conns:
        conn.close()


def test_connections_that_log_in_are_never_given_up_and_the_reserve_is_theirs(
    server: RunningServer,
) -> None:
    addresses = [f"127.0.0.{n}" for n in range(10, 30)]
    logged_in = []
    for n in range(2):
        conn = Conn(server, addresses[n])
        assert conn.login().result["user"] == "admin"
        logged_in.append(conn)
    # Connections that do not log in may take only the slots outside the reserve: the one
    # over that takes the slot of the oldest of them, though the server has free slots.
    unauthenticated = MAX_CONNECTIONS - RESERVED
    idle = [Conn(server, addresses[n % len(addresses)]) for n in range(unauthenticated + 1)]
    assert all(isinstance(c.first, Greeting) for c in idle)
    evicted = idle[0].read()
    assert (evicted.code, evicted.detail) == ("limit_exceeded", {"limit": "reserved_connections"})
    for conn in idle[1:]:  # the others are still open: a login works on each of the first few
        conn.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            conn.sock.recv(1)
        conn.sock.setblocking(True)
    for conn in logged_in:  # never given up, still served
        conn.sock.sendall(encode_request(7, "ping", {}))
        assert conn.read().result == "pong"
    # Every slot taken (connections that log in fill the reserve): a new one still gets in,
    # in the slot of the oldest connection that has not logged in.
    for _ in range(RESERVED - 2):
        conn = Conn(server, GOOD)
        assert conn.login().result["user"] == "admin"
        logged_in.append(conn)
    late = Conn(server, GOOD)
    assert late.login().result["user"] == "admin"
    for conn in [*logged_in, *idle, late]:
        conn.close()


def test_the_listen_backlog_is_the_option(tmp_path: Path) -> None:
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--listen-backlog", "777"]) as server:
        shown = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True,
                               text=True, check=True).stdout.split()
        assert shown[2] == "777", shown  # Send-Q of a listening socket: its backlog
