"""Shutdown (SIGTERM) against a real bucketlyd: bounded in time, and nothing it promised lost."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bucketly.protocol import Reply
from bucketly.testing import RunningServer

from .conftest import RawConnection
from .test_durability import ledger, start

#: The job's work hangs this long; shutdown gives up on it after SHUTDOWN_TIMEOUT.
HANG = 20
SHUTDOWN_TIMEOUT = 1


@pytest.fixture
def servers() -> Any:
    started: list[RunningServer] = []
    yield started
    for running in started:
        running.kill()


@pytest.mark.parametrize("durable", [False, True])
def test_shutdown_timeout_bounds_the_exit_and_keeps_what_the_job_took(
    tmp_path: Path, servers: list, durable: bool
) -> None:
    db = tmp_path / "db.dat"
    servers.append(server := start(db, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)))
    with server.client() as client:
        client.create_bucket("s", "Stuck", {"hang": HANG}, durable=durable)
        client.send_many("s", ["p1", "p2"])
        client.flush()
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=HANG)
    elapsed = time.monotonic() - started
    assert code == 0
    # The final run hangs for 20 s: the exit must not wait for it (a few seconds of slack for
    # the rest of the shutdown on a loaded machine).
    assert elapsed < SHUTDOWN_TIMEOUT + 6, elapsed
    (line,) = [line for line in server.logs if "giving up after 1s" in line]
    assert "s.flush" in line
    servers.append(server := start(db))
    # A durable bucket keeps what its unfinished job had taken; any other starts empty, as
    # handlers.md says of every non-durable bucket.
    assert ledger(server, "s") == (["p1", "p2"] if durable else [])


class Producer:
    """One raw connection pipelining numbered sends flat out, and reading every reply."""

    #: Requests in flight at most: enough to keep the server's pipeline full.
    WINDOW = 64

    def __init__(self, server: RunningServer, index: int, bucket: str) -> None:
        self.conn = RawConnection(server.host, server.port, timeout=30)
        self.conn.auth()
        self.index = index
        self.bucket = bucket
        self.sent: list[int] = []  # request ids, in order
        self.replies: list[Any] = []
        self.closed = threading.Event()
        self.failure: BaseException | None = None

    def events(self, request_id: int) -> list[str]:
        return [f"{self.index}-{request_id}-{k}" for k in range(10)]

    def run(self) -> None:
        try:
            request_id = 0
            while not self.closed.is_set():
                while len(self.sent) - len(self.replies) < self.WINDOW:
                    request_id += 1
                    self.conn.request(request_id, "send", bucket=self.bucket,
                                      events=self.events(request_id))
                    self.sent.append(request_id)
                self._read_one()
        except (OSError, EOFError):
            pass  # the server closed: read what is left below
        except BaseException as exc:
            self.failure = exc
        try:
            while True:
                self._read_one()
        except (OSError, EOFError):
            self.closed.set()
        finally:
            self.conn.sock.close()

    def _read_one(self) -> None:
        self.replies.append(self.conn.read())


@pytest.mark.parametrize("durable", [True, False])
def test_sigterm_answers_every_request_it_read_and_loses_no_ack(
    tmp_path: Path, servers: list, durable: bool
) -> None:
    db = tmp_path / "db.dat"
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=durable)
    producers = [Producer(server, i, "d") for i in range(6)]
    threads = [threading.Thread(target=p.run) for p in producers]
    for thread in threads:
        thread.start()
    # Under load: wait until every producer has had replies (a readiness signal, not a sleep).
    deadline = time.monotonic() + 30
    while any(len(p.replies) < 200 for p in producers):
        assert time.monotonic() < deadline, "the producers made no progress"
        time.sleep(0.01)
    assert server.stop(signal.SIGTERM) == 0
    for thread in threads:
        thread.join(30)
    acked: set[str] = set()
    refused = 0
    for producer in producers:
        assert producer.failure is None, producer.failure
        replies = producer.replies
        # One reply per request, in order, for a prefix of what was sent: each one an ack or
        # shutting_down, and no ack after the first shutting_down.
        assert [r.id for r in replies] == producer.sent[: len(replies)]
        kinds = ["ack" if isinstance(r, Reply) else r.code for r in replies]
        assert set(kinds) <= {"ack", "shutting_down"}, set(kinds)
        first_refused = kinds.index("shutting_down") if "shutting_down" in kinds else len(kinds)
        assert "ack" not in kinds[first_refused:]
        refused += len(kinds) - first_refused
        for reply in replies[:first_refused]:
            acked.update(producer.events(reply.id))
    # The producers were still sending when the server stopped: some requests got
    # shutting_down, or were never read (no reply, so not carried out).
    assert refused or any(len(p.sent) > len(p.replies) for p in producers)
    if durable:
        # Exactly the acknowledged sends are on disk: none lost, and nothing unacknowledged
        # (shutting_down or unanswered) was carried out.
        servers.append(server := start(db))
        assert set(ledger(server, "d")) == acked
        assert len(ledger(server, "d")) == len(acked)


def test_no_snapshot_while_a_job_holds_data_it_took(tmp_path: Path, servers: list) -> None:
    """A snapshot taken while the job's batch is out of the state would lose the batch."""
    db = tmp_path / "db.dat"
    servers.append(server := start(db, "--snapshot-events", "1", "--shutdown-timeout", "1"))
    with server.client() as client:
        client.create_bucket("s", "Stuck", {"hang": HANG, "interval": 0.1}, durable=True)
        client.send_many("s", ["p1", "p2"])
        client.flush()
        deadline = time.monotonic() + 10
        while not client.bucket_info("s")["jobs"]["flush"]["running"]:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.02)
        client.send_many("s", ["p3"])  # a commit that would snapshot (--snapshot-events 1)
        client.flush()
        assert client.view("s", "all") == ["p3"]  # p1, p2 are out with the job
    assert server.stop(signal.SIGTERM, timeout=HANG) == 0
    servers.append(server := start(db))
    # Its job runs again at once and takes them out: count what it holds too.
    with server.client() as client:
        assert sorted(client.view("s", "held")) == ["p1", "p2", "p3"]


def test_a_connection_closed_for_a_pre_auth_limit_frees_its_slot_at_once(
    tmp_path: Path, servers: list
) -> None:
    servers.append(server := start(tmp_path / "db.dat", "--max-connections", "3"))
    holders = []
    for _ in range(3):
        conn = RawConnection(server.host, server.port)
        conn.send_bytes((1 << 20).to_bytes(4, "big"))  # a header over the pre-auth limit
        assert conn.read().code == "frame_too_large"
        holders.append(conn)  # ... and the client keeps its side open
    try:
        # All three are closed by the server: a good login gets a slot (a few tries, while
        # the server finishes closing them; a lingering close would hold them for 5 s).
        deadline = time.monotonic() + 2
        while True:
            good = RawConnection(server.host, server.port)
            if good.greeting.__class__.__name__ == "Greeting":
                break
            good.sock.close()
            assert time.monotonic() < deadline, "the slots stayed taken"
            time.sleep(0.05)
        good.auth()
        good.sock.close()
    finally:
        for conn in holders:
            conn.sock.close()
