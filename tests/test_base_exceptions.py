"""Handler code that raises a BaseException (SystemExit, KeyboardInterrupt, its own) is a
handler error like any other: the client is told, the server goes on and still stops on SIGTERM.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.testing import RunningServer

from .test_durability import ledger, start


@pytest.mark.parametrize("kind", ["exit", "interrupt", "escape"])
def test_an_event_raising_a_base_exception_is_a_handler_error(
    server: RunningServer, kind: str
) -> None:
    with server.client() as client, server.client() as other:
        client.create_bucket("x", "Exiter", {"interval": 0.05})
        client.send("x", "before")
        client.send("x", kind)
        with pytest.raises(bucketly.HandlerError, match=f"on_event raised .*{kind}"):
            client.flush()
        client.send("x", "after")
        client.flush()
        assert client.view("x", "all") == ["before", "after"]
        with pytest.raises(bucketly.HandlerError, match=r"view Exiter\.escape raised"):
            client.view("x", "escape", kind=kind)
        assert other.ping() == "pong"  # another connection was never held up
    assert server.returncode is None
    assert server.stop(signal.SIGTERM) == 0


def test_a_job_raising_system_exit_is_a_failed_run(server: RunningServer) -> None:
    with server.client() as client:
        client.create_bucket("x", "Exiter", {"interval": 0.05})
        server.wait_for_log(r"job x\.job failed \(1 in a row\): SystemExit: from a job")
        jobs = client.bucket_info("x")["jobs"]["job"]
        assert jobs["failures"] >= 1 and "SystemExit" in jobs["last_error"]
        assert client.ping() == "pong"
    assert server.stop(signal.SIGTERM) == 0


def test_a_durable_bucket_whose_handler_raised_system_exit_recovers(
    tmp_path: Path, servers: Any
) -> None:
    """The record was logged before it was applied: its replay raises again, and is reported."""
    db = tmp_path / "db.dat"
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("q", "Quitter", durable=True)
        client.create_bucket("d", "Ledger", durable=True)
        client.send_many("q", ["a", "quit", "b"])
        with pytest.raises(bucketly.HandlerError, match="SystemExit"):
            client.flush()
        client.send_many("d", ["kept"])
        client.flush()
    server.kill()
    servers.append(server := start(db))
    assert ledger(server, "q") == ["a"]  # as before: the batch stopped at "quit"
    assert ledger(server, "d") == ["kept"]
    (warning,) = [line for line in server.logs if "raised on 1 of the records replayed" in line]
    assert "durable bucket 'q'" in warning and "record 1" in warning and "SystemExit" in warning
    assert server.stop() == 0


@pytest.fixture
def servers() -> Any:
    started: list[RunningServer] = []
    yield started
    for running in started:
        running.kill()
