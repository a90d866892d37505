"""The snapshot persistence level (issue 11): state saved every few seconds and at shutdown.

Each test runs real bucketlyd processes on one database file: a planned stop (SIGTERM, SIGINT)
loses nothing; a kill -9 loses what came after the last snapshot, no more; a crash in the middle
of a snapshot's write leaves the previous one; buckets move between the three levels at run
time keeping their state; bad arguments and a handler whose snapshot() raises break nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bucketly import BadArgument
from bucketly.buckets.faults import FAULT_ENV, FAULT_EXIT_STATUS
from bucketly.testing import run_server
from tests.conftest import TEST_HANDLERS


def _wait(what: str, condition: Callable[[], Any], timeout: float = 30.0) -> None:
    """Poll the server (a real request each time) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _snapshot(client: Any, bucket: str) -> dict[str, Any]:
    snapshots: dict[str, Any] = client.bucket_info(bucket)["snapshots"]
    return snapshots


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_planned_restart_loses_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    database = tmp_path / "db.dat"
    with run_server(TEST_HANDLERS, database) as first, first.client() as admin:
        admin.create_bucket("s", "Recorder", persistence="snapshot", snapshot_interval=86_400)
        admin.send_many("s", list(range(1000)))
        admin.flush()
        # A day between snapshots: none was taken; only the shutdown can save these events.
        assert _snapshot(admin, "s")["taken_at"] is None
        assert first.stop(sig) == 0
    assert any("snapshotting 1 snapshot-level buckets" in line for line in first.logs)
    with run_server(TEST_HANDLERS, database) as second, second.client() as admin:
        assert admin.view("s", "all") == list(range(1000))
        info = admin.bucket_info("s")
        assert info["persistence"] == "snapshot"
        assert info["events"] == 1000
        assert info["snapshots"]["events"] == 1000
        assert info["snapshots"]["interval_seconds"] == 86_400


def test_a_kill_9_loses_only_what_came_after_the_last_snapshot(tmp_path: Path) -> None:
    database = tmp_path / "db.dat"
    with run_server(TEST_HANDLERS, database) as first, first.client() as admin:
        admin.create_bucket("s", "Recorder", persistence="snapshot", snapshot_interval=1)
        admin.send_many("s", list(range(500)))
        admin.flush()
        _wait("the snapshot of 500 events", lambda: _snapshot(admin, "s")["events"] == 500)
        # No more snapshots: what follows is in memory only.
        admin.configure_bucket("s", snapshot_interval=86_400)
        admin.send_many("s", list(range(500, 600)))
        admin.flush()
        assert admin.view("s", "count") == 600
        snapshot = _snapshot(admin, "s")
        assert snapshot["events"] == 500
        assert 0 <= snapshot["age_seconds"] < 60
        assert snapshot["bytes"] > 0
        # Encoded in a child process, not on the event loop.
        assert admin.stats()["snapshots"]["forked"] >= 1
        first.kill()
    with run_server(TEST_HANDLERS, database) as second, second.client() as admin:
        assert admin.view("s", "all") == list(range(500))
        assert admin.bucket_info("s")["snapshots"]["interval_seconds"] == 86_400


def test_a_crash_in_the_middle_of_a_snapshot_leaves_the_previous_one(tmp_path: Path) -> None:
    database = tmp_path / "db.dat"
    # The second snapshot's write exits the process before its transaction commits.
    env = {FAULT_ENV: "level_snapshot.before_commit@2"}
    with run_server(TEST_HANDLERS, database, env=env) as first, first.client() as admin:
        admin.create_bucket("s", "Recorder", persistence="snapshot", snapshot_interval=1)
        admin.send_many("s", list(range(300)))
        admin.flush()
        _wait("the first snapshot", lambda: _snapshot(admin, "s")["events"] == 300)
        admin.send_many("s", list(range(300, 400)))
        admin.flush()
        assert first.process.wait(60) == FAULT_EXIT_STATUS
    with run_server(TEST_HANDLERS, database) as second, second.client() as admin:
        assert admin.view("s", "all") == list(range(300))


def test_buckets_move_between_the_three_levels_keeping_their_state(tmp_path: Path) -> None:
    database = tmp_path / "db.dat"
    with run_server(TEST_HANDLERS, database) as server, server.client() as admin:
        admin.create_bucket("b", "Recorder")
        admin.send_many("b", list(range(100)))
        admin.flush()
        moved = admin.configure_bucket("b", persistence="snapshot", snapshot_interval=1)
        assert moved["persistence"] == "snapshot"
        _wait("its first snapshot", lambda: _snapshot(admin, "b")["events"] == 100)
        server.kill()
    with run_server(TEST_HANDLERS, database) as server, server.client() as admin:
        assert admin.view("b", "all") == list(range(100))
        assert admin.configure_bucket("b", persistence="durable")["persistence"] == "durable"
        assert admin.bucket_info("b")["snapshots"] is None
        admin.send_many("b", list(range(100, 150)))
        admin.flush()
        server.kill()  # durable: every acknowledged event survives
    with run_server(TEST_HANDLERS, database) as server, server.client() as admin:
        assert admin.view("b", "all") == list(range(150))
        # Leaving durable for snapshot takes a snapshot of the state at once, the log dropped.
        moved = admin.configure_bucket("b", durable=False, persistence="snapshot")
        assert moved["durable"] is False
        snapshot = _snapshot(admin, "b")
        assert snapshot["events"] == 150
        assert snapshot["taken_at"] is not None
        assert admin.bucket_info("b")["durability"] is None
        admin.send_many("b", list(range(150, 160)))
        admin.flush()
    with run_server(TEST_HANDLERS, database) as server, server.client() as admin:
        assert admin.view("b", "all") == list(range(160))
        assert admin.configure_bucket("b", persistence="memory")["persistence"] == "memory"
        assert admin.bucket_info("b")["snapshots"] is None
    with run_server(TEST_HANDLERS, database) as server, server.client() as admin:
        info = admin.bucket_info("b")
        assert info["persistence"] == "memory"
        assert admin.view("b", "all") == []


def test_bad_persistence_arguments_are_refused_and_nothing_else_breaks(tmp_path: Path) -> None:
    with run_server(TEST_HANDLERS, tmp_path / "db.dat") as server, server.client() as admin:
        admin.create_bucket("ok", "Recorder", persistence="snapshot")
        admin.send("ok", 1)
        refused: list[tuple[str, dict[str, Any], str]] = [
            ("create_bucket", {"handler": "Recorder", "persistence": "forever"},
             "persistence must be one of memory, snapshot, durable"),
            ("create_bucket", {"handler": "Recorder", "persistence": "snapshot",
                               "durable": True}, "contradicts persistence"),
            ("create_bucket", {"handler": "Recorder", "snapshot_interval": 0.5},
             "snapshot_interval must be a number of seconds from 1 to 86400"),
            ("create_bucket", {"handler": "Recorder", "snapshot_interval": True},
             "must be of type number"),
            ("configure_bucket", {"persistence": "disk"}, "persistence must be one of"),
            ("configure_bucket", {"snapshot_interval": 100_000}, "from 1 to 86400"),
        ]
        for op, args, message in refused:
            bucket = "new" if op == "create_bucket" else "ok"
            with pytest.raises(BadArgument, match=message):
                admin._call(op, {"bucket": bucket, **args})
        assert "new" not in {b["name"] for b in admin.buckets()}
        info = admin.bucket_info("ok")
        assert info["persistence"] == "snapshot"
        assert info["snapshots"]["interval_seconds"] == 60
        admin.send("ok", 2)
        assert admin.view("ok", "all") == [1, 2]


def test_a_snapshot_that_raises_keeps_the_previous_one_and_says_why(tmp_path: Path) -> None:
    database = tmp_path / "db.dat"
    with run_server(TEST_HANDLERS, database) as first, first.client() as admin:
        admin.create_bucket("f", "Fragile", persistence="snapshot", snapshot_interval=1)
        admin.send_many("f", ["a", "b"])
        admin.flush()
        _wait("the first snapshot", lambda: _snapshot(admin, "f")["events"] == 2)
        admin.send("f", "poison")
        _wait("the failed snapshot", lambda: _snapshot(admin, "f")["error"] is not None)
        error = _snapshot(admin, "f")["error"]
        assert "Fragile.snapshot raised" in error and "refused on purpose" in error
        assert _snapshot(admin, "f")["events"] == 2
        # The bucket and the server go on.
        admin.send("f", "c")
        assert admin.view("f", "all") == ["a", "b", "poison", "c"]
        _wait("a snapshot again", lambda: _snapshot(admin, "f")["events"] == 4)
        assert _snapshot(admin, "f")["error"] is None
        admin.send("f", "poison")
        _wait("the failed snapshot", lambda: _snapshot(admin, "f")["error"] is not None)
        first.kill()
    assert any("snapshot refused on purpose" in line for line in first.logs)
    with run_server(TEST_HANDLERS, database) as second, second.client() as admin:
        assert admin.view("f", "all") == ["a", "b", "poison", "c"]
