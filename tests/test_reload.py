"""Reloading the handlers module with every bucket's state kept (issue 11, part 1).

Each test writes its own handlers file, starts a real bucketlyd on it, and rewrites the file
between reloads, as an operator deploying a fix would.
"""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bucketly.errors import PermissionDenied, ReloadFailed, UnknownHandler
from bucketly.store.schema import MIGRATIONS
from bucketly.testing import RunningServer, bucketlyd_command, run_server

COUNTER = """
import bucketly

class Streams(bucketly.Handler):
    \"\"\"Every event's index, per producer: order and completeness can be checked.\"\"\"

    def __init__(self, config):
        super().__init__(config)
        self.seen = {}

    def on_events(self, events):
        seen = self.seen
        for event in events:
            seen.setdefault(str(event["p"]), []).append(event["i"])

    @bucketly.view
    def version(self):
        return VERSION

    @bucketly.view
    def streams(self):
        return self.seen

    @bucketly.view
    def total(self):
        return sum(len(v) for v in self.seen.values())

class Other(bucketly.Handler):
    def __init__(self, config):
        super().__init__(config)
        self.n = 0

    def on_events(self, events):
        self.n += len(events)

    @bucketly.view
    def total(self):
        return self.n
"""


def version(n: int, extra: str = "") -> str:
    return f"VERSION = {n}\n" + COUNTER + textwrap.dedent(extra)


@pytest.fixture
def handlers_file(tmp_path: Path) -> Path:
    path = tmp_path / "handlers.py"
    path.write_text(version(1))
    return path


@pytest.fixture
def server(handlers_file: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(handlers_file, tmp_path / "db.dat") as running:
        yield running


def test_a_reload_while_four_clients_send_flat_out_loses_and_reorders_nothing(
    server: RunningServer, handlers_file: Path
) -> None:
    per_client = 40_000
    with server.client() as admin:
        admin.create_bucket("s", "Streams")
        errors: list[BaseException] = []
        started = threading.Barrier(5)

        def produce(k: int) -> None:
            try:
                with server.client() as client:
                    started.wait()
                    for i in range(per_client):
                        client.send("s", {"p": k, "i": i})
                    client.flush()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        started.wait()
        reloads = []
        for n in range(2, 7):
            handlers_file.write_text(version(n))
            reloads.append(admin.reload())
        for thread in threads:
            thread.join()
        assert not errors, errors
        streams = admin.view("s", "streams")
        assert sorted(streams) == ["0", "1", "2", "3"]
        for k in range(4):
            assert streams[str(k)] == list(range(per_client)), f"producer {k} lost or reordered"
        assert admin.view("s", "version") == 6
        # The reloads happened while the clients were sending, not after.
        assert any(r["buckets"]["s"]["state_bytes"] > 0 for r in reloads)
        assert all(r["buckets"]["s"]["status"] == "reloaded" for r in reloads)
        assert admin.handlers_module()["reloads"] == 5


BROKEN = {
    "syntax error": ("VERSION = 2\ndef broken(:\n    pass\n" + COUNTER, 2, None),
    "import raises": ("VERSION = 2\n" + COUNTER + "\nraise RuntimeError('not today')\n", None,
                      None),
    "class missing": (version(2).replace("class Streams(", "class Renamed("), None, "s"),
    "restore raises": (
        version(2, """
        def _restore(self, state):
            raise ValueError("cannot take this state")
        Streams.restore = _restore
        """),
        None,
        "s",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_failed_reload_changes_nothing_and_names_the_place(
    server: RunningServer, handlers_file: Path, case: str
) -> None:
    text, line, bucket = BROKEN[case]
    with server.client() as admin:
        admin.create_bucket("s", "Streams")
        admin.create_bucket("o", "Other")
        admin.send_many("s", [{"p": 0, "i": i} for i in range(100)])
        admin.send_many("o", list(range(7)))
        admin.flush()
        before = admin.handlers_module()
        handlers_file.write_text(text)
        with pytest.raises(ReloadFailed) as caught:
            admin.reload()
        error = caught.value
        assert error.message.startswith("reload refused, nothing changed")
        if case != "class missing":
            assert error.detail["file"] == str(handlers_file.resolve())
            assert str(handlers_file.resolve()) in error.message
        if line is not None:
            assert error.detail["line"] == line
            assert f"line {line}" in error.message
        if bucket is not None:
            assert error.detail["bucket"] == bucket
        if case == "restore raises":
            assert "Streams.restore raised ValueError: cannot take this state" in error.message
        server.wait_for_log("reload refused, nothing changed")
        # The old code goes on serving, with all its state, and takes new events.
        assert admin.view("s", "version") == 1
        admin.send("s", {"p": 0, "i": 100})
        assert admin.view("s", "streams") == {"0": list(range(101))}
        assert admin.view("o", "total") == 7
        assert admin.handlers_module()["sha256"] == before["sha256"]
        assert admin.handlers_module()["reloads"] == 0


def test_sighup_reloads_and_handlers_module_says_which_file(
    server: RunningServer, handlers_file: Path
) -> None:
    with server.client() as admin:
        admin.create_bucket("s", "Streams")
        admin.send_many("s", [{"p": 1, "i": i} for i in range(10)])
        admin.flush()
        first = admin.handlers_module()
        assert first["sha256"] == hashlib.sha256(handlers_file.read_bytes()).hexdigest()
        assert first["path"] == str(handlers_file.resolve())
        handlers_file.write_text(version(2))
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log("reloaded handlers module")
        assert admin.view("s", "version") == 2
        assert admin.view("s", "total") == 10
        now = admin.handlers_module()
        assert now["sha256"] == hashlib.sha256(handlers_file.read_bytes()).hexdigest()
        assert now["sha256"] != first["sha256"] and now["reloads"] == 1


MIGRATING = '''
VERSION = 3
import bucketly

class Streams(bucketly.Handler):
    """Now keeps a count per producer, not every index: state_version 2."""

    state_version = 2

    def __init__(self, config):
        super().__init__(config)
        self.per_producer = {}

    def on_events(self, events):
        for event in events:
            key = str(event["p"])
            self.per_producer[key] = self.per_producer.get(key, 0) + 1

    def migrate(self, state, version):
        assert version == 1
        return {"per_producer": {p: len(indexes) for p, indexes in state["seen"].items()}}

    @bucketly.view
    def version(self):
        return VERSION

    @bucketly.view
    def counts(self):
        return self.per_producer
'''


def test_a_migrate_hook_changes_the_shape_of_the_state(
    server: RunningServer, handlers_file: Path
) -> None:
    with server.client() as admin:
        admin.create_bucket("s", "Streams")
        admin.send_many("s", [{"p": p, "i": i} for p in (1, 2) for i in range(p * 10)])
        admin.flush()
        handlers_file.write_text(MIGRATING)
        result = admin.reload()
        assert result["buckets"]["s"]["migrated_from"] == 1
        assert admin.view("s", "counts") == {"1": 10, "2": 20}
        admin.send("s", {"p": 1, "i": 10})
        assert admin.view("s", "counts") == {"1": 11, "2": 20}


def test_force_drops_only_the_buckets_whose_class_is_gone(
    server: RunningServer, handlers_file: Path
) -> None:
    with server.client() as admin:
        admin.create_bucket("s", "Streams")
        admin.create_bucket("o", "Other")
        admin.send_many("o", list(range(5)))
        admin.flush()
        handlers_file.write_text(version(2).replace("class Other(", "class Renamed("))
        with pytest.raises(ReloadFailed) as caught:
            admin.reload()
        assert caught.value.detail["missing"] == ["Other"]
        assert admin.view("o", "total") == 5
        result = admin.reload(force=True)
        assert result["buckets"]["o"]["status"] == "dropped"
        assert result["buckets"]["s"]["status"] == "reloaded"
        with pytest.raises(UnknownHandler, match="no longer defines"):
            admin.view("o", "total")
        assert admin.view("s", "version") == 2
        server.wait_for_log("bucket 'o' lost its state")


def test_reloading_needs_its_own_permission(server: RunningServer) -> None:
    with server.client() as admin:
        admin.create_user("ops", "a long password 1")
        admin.grant("ops", "stats")
    with server.client("ops", "a long password 1") as ops:
        assert ops.handlers_module()["reloads"] == 0
        with pytest.raises(PermissionDenied, match=r"handlers\.reload"):
            ops.reload()
    with server.client() as admin:
        admin.grant("ops", "handlers.reload")
    with server.client("ops", "a long password 1") as ops:
        assert ops.reload()["buckets"] == {}


FLUSHING = """
import functools, os, time
import bucketly

VERSION = {n}

class Flusher(bucketly.Handler):
    def __init__(self, config):
        super().__init__(config)
        self.pending = []
        self.written = 0
        self.put_back_by = None
        self.release = config["release"]
        self.fail = config["fail"]

    def on_events(self, events):
        self.pending.extend(events)

    @bucketly.every(seconds=0.05)
    def flush(self):
        if not self.pending:
            return None
        batch, self.pending = self.pending, []
        release, fail = self.release, self.fail

        def work():
            while not os.path.exists(release):  # the test's signal to go on
                time.sleep(0.01)
            if os.path.exists(fail):
                raise ConnectionError("the database went away")
            return len(batch)

        return bucketly.Job(
            work,
            on_success=self.wrote,
            on_failure=functools.partial(self.put_back, batch),
        )

    def wrote(self, n):
        self.written += n

    def put_back(self, batch, exc):
        self.pending[:0] = batch
        self.put_back_by = VERSION

    @bucketly.view
    def state(self):
        return {{"version": VERSION, "pending": len(self.pending), "written": self.written,
                "put_back_by": self.put_back_by}}
"""


def _wait(what: str, condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_job_running_during_a_reload_fails_into_the_new_instance(tmp_path: Path) -> None:
    handlers = tmp_path / "flush.py"
    handlers.write_text(FLUSHING.format(n=1))
    release, fail = tmp_path / "release", tmp_path / "fail"
    fail.touch()
    config = {"release": str(release), "fail": str(fail)}
    with run_server(handlers, tmp_path / "db.dat") as server, server.client() as admin:
        admin.create_bucket("f", "Flusher", config)
        admin.send_many("f", list(range(50)))
        admin.flush()

        def job() -> dict[str, Any]:
            return admin.stats()["buckets"]["f"]["jobs"]["flush"]  # type: ignore[no-any-return]

        _wait("the job to start", lambda: job()["running"])
        assert admin.view("f", "state")["pending"] == 0  # the running job holds the batch
        handlers.write_text(FLUSHING.format(n=2))
        assert admin.reload()["buckets"]["f"]["status"] == "reloaded"
        release.touch()  # the job that started under version 1 now fails
        _wait("the job to fail", lambda: job()["failures"] >= 1)
        state = admin.view("f", "state")
        assert state["version"] == 2 and state["put_back_by"] == 2
        fail.unlink()  # the database is back: the put-back batch gets written, once
        _wait("the batch to be written", lambda: admin.view("f", "state")["written"] == 50)
        assert admin.view("f", "state")["pending"] == 0


def test_kill_9_right_after_a_reload_of_a_durable_bucket_loses_nothing(
    handlers_file: Path, tmp_path: Path
) -> None:
    database = tmp_path / "durable.dat"
    first = RunningServer(bucketlyd_command(database, handlers_file))
    try:
        first.wait_ready()
        with first.client() as admin:
            admin.create_bucket("d", "Streams", durable=True)
            admin.send_many("d", [{"p": 0, "i": i} for i in range(1000)])
            admin.flush()
            handlers_file.write_text(version(2))
            assert admin.reload()["buckets"]["d"]["status"] == "reloaded"
            admin.send_many("d", [{"p": 0, "i": i} for i in range(1000, 1500)])
            admin.flush()  # acknowledged: on disk
    finally:
        first.kill()
    with run_server(handlers_file, database) as second, second.client() as admin:
        assert admin.view("d", "version") == 2
        assert admin.view("d", "streams") == {"0": list(range(1500))}


def test_kill_9_after_a_reload_that_migrated_a_durable_bucket_recovers_the_new_shape(
    handlers_file: Path, tmp_path: Path
) -> None:
    # The snapshot on disk was taken by version 1's class; the records after it are events:
    # recovery with the new class must migrate that snapshot, then replay the records.
    database = tmp_path / "durable.dat"
    first = RunningServer(
        bucketlyd_command(database, handlers_file, extra_args=["--snapshot-events", "1000"])
    )
    try:
        first.wait_ready()
        with first.client() as admin:
            admin.create_bucket("d", "Streams", durable=True)
            admin.send_many("d", [{"p": 0, "i": i} for i in range(1000)])
            admin.flush()

            def snapshots() -> int:
                return admin.bucket_info("d")["durability"]["snapshots"]  # type: ignore[no-any-return]

            _wait("version 1's snapshot", lambda: snapshots() == 1)
            handlers_file.write_text(MIGRATING)
            assert admin.reload()["buckets"]["d"]["migrated_from"] == 1
            admin.send_many("d", [{"p": 0, "i": i} for i in range(1000, 1500)])
            admin.send_many("d", [{"p": 1, "i": 0}])
            admin.flush()
            assert snapshots() == 1  # the one on disk is still version 1's
    finally:
        first.kill()
    with run_server(handlers_file, database) as second, second.client() as admin:
        assert admin.view("d", "version") == 3
        assert admin.view("d", "counts") == {"0": 1500, "1": 1}


def test_a_file_of_the_last_release_opens_with_its_durable_state(
    handlers_file: Path, tmp_path: Path
) -> None:
    """A file written by 0.1 (schema version 5: snapshots without a state_version) is migrated
    and its durable bucket recovered whole, snapshot and journal."""
    database = tmp_path / "old.dat"
    with run_server(handlers_file, database, extra_args=["--snapshot-events", "100"]) as first:
        with first.client() as admin:
            admin.create_bucket("d", "Streams", durable=True)
            admin.send_many("d", [{"p": 0, "i": i} for i in range(150)])
            admin.flush()
            _wait("a snapshot", lambda: admin.bucket_info("d")["durability"]["snapshots"] >= 1)
            admin.send_many("d", [{"p": 0, "i": i} for i in range(150, 160)])
            admin.flush()
    conn = sqlite3.connect(database)
    conn.executescript(
        """
        ALTER TABLE durable_snapshots DROP COLUMN state_version;
        ALTER TABLE buckets DROP COLUMN partition;
        ALTER TABLE buckets ADD COLUMN durable INTEGER NOT NULL DEFAULT 0;
        UPDATE buckets SET durable = (persistence = 'durable');
        ALTER TABLE buckets DROP COLUMN snapshot_interval;
        ALTER TABLE buckets DROP COLUMN persistence;
        PRAGMA user_version = 5;
        """
    )
    conn.commit()
    conn.close()
    with run_server(handlers_file, database) as second, second.client() as admin:
        assert admin.view("d", "streams") == {"0": list(range(160))}
        assert admin.bucket_info("d")["persistence"] == "durable"
    conn = sqlite3.connect(database)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1][0]
    conn.close()


def test_a_file_of_a_newer_release_is_refused_untouched(
    handlers_file: Path, tmp_path: Path
) -> None:
    database = tmp_path / "new.dat"
    with run_server(handlers_file, database):
        pass
    conn = sqlite3.connect(database)
    conn.execute(f"PRAGMA user_version = {MIGRATIONS[-1][0] + 1}")
    conn.commit()
    conn.close()
    before = database.read_bytes()
    server = RunningServer(bucketlyd_command(database, handlers_file))
    assert server.process.wait(30) != 0
    server.kill()
    assert any("newer than this bucketly knows" in line for line in server.logs), server.logs
    assert database.read_bytes() == before
