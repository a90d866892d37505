"""Damage to the database file, and losses it would hide, against a real bucketlyd.

Each kind of damage must stop the start (exit status 7, a message naming what is wrong), and
each way out must work: ``--accept-data-loss`` rebuilds from what is whole and says what was
lost; ``--quarantine-damaged`` serves the other buckets and leaves the damaged one untouched.
A clean restart and a kill -9 without damage start silently and exactly.
"""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.errors import DataLossDetected
from bucketly.store.mark import mark_path

from .test_durability import ledger, run_to_exit, start

EXIT_DATA_LOSS = DataLossDetected.exit_code
WAL_HEADER = 32
FRAME_HEADER = 24


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "db.dat"


@pytest.fixture
def servers() -> Any:
    started: list[Any] = []
    yield started
    for server in started:
        server.kill()


def _three_batches(db: Path, servers: list, *, other: bool = False) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=True)
        if other:
            client.create_bucket("e", "Ledger", durable=True)
            client.send_many("e", ["e1"])
        for batch in (["a1", "a2"], ["b1"], ["c1", "c2"]):
            client.send_many("d", batch)
            client.flush()
    server.kill()  # no shutdown snapshot: the three records stay in the log


def _sql(db: Path, statement: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(statement)
    conn.close()


def _refused(db: Path, *needles: str, bucket: bool = True) -> str:
    """Start must fail with exit status 7, saying ``needles`` and the ways out."""
    code, logs = run_to_exit(db)
    assert code == EXIT_DATA_LOSS, logs
    for needle in needles:
        assert needle in logs, (needle, logs)
    assert "--accept-data-loss" in logs
    # Quarantine is for one bucket's damage; a file that lost transactions has no such way.
    assert ("--quarantine-damaged" in logs) == bucket
    return logs


def _accepted(db: Path, servers: list, *needles: str) -> Any:
    servers.append(server := start(db, "--accept-data-loss"))
    lost = [line for line in server.logs if "DATA LOSS ACCEPTED" in line]
    assert len(lost) == 1, server.logs
    for needle in needles:
        assert needle in lost[0], (needle, lost[0])
    with server.client() as client:
        assert any(e["event"] == "data_loss_accepted" for e in client.audit())
    return server


# -- no damage: silent and exact --------------------------------------------------------------


def test_clean_restarts_and_kill_9_start_silently(db: Path, servers: list) -> None:
    _three_batches(db, servers)
    servers.append(server := start(db))  # after kill -9
    assert ledger(server) == ["a1", "a2", "b1", "c1", "c2"]
    assert server.stop() == 0
    servers.append(server := start(db))  # after a clean stop (snapshot, log compacted)
    assert ledger(server) == ["a1", "a2", "b1", "c1", "c2"]
    complaints = [line for line in server.logs if ("WARNING" in line or "ERROR" in line)
                  and "default password" not in line]
    assert not complaints, complaints
    assert mark_path(db).is_file()


# -- a durable bucket's log ---------------------------------------------------------------------


def test_a_damaged_last_record_refuses_to_start(db: Path, servers: list) -> None:
    """A committed record is acknowledged: even the last one is not dropped silently."""
    _three_batches(db, servers)
    _sql(db, "UPDATE durable_log SET events = substr(events, 1, length(events) - 2) "
             "WHERE bucket = 'd' AND seq = 3")
    _refused(db, "bucket 'd'", "record 3 fails its checksum")
    server = _accepted(db, servers, "records 3 to 3 are lost")
    assert ledger(server) == ["a1", "a2", "b1"]
    server.kill()
    servers.append(server := start(db))  # accepted once: the file is whole again
    assert ledger(server) == ["a1", "a2", "b1"]


def test_damage_in_the_middle_of_the_log_refuses_to_start(db: Path, servers: list) -> None:
    _three_batches(db, servers)
    _sql(db, "UPDATE durable_log SET events = X'90' WHERE bucket = 'd' AND seq = 2")
    _refused(db, "bucket 'd'", "record 2 fails its checksum")
    server = _accepted(db, servers, "records 2 to 3 are lost")
    assert ledger(server) == ["a1", "a2"]


def test_a_missing_record_refuses_to_start(db: Path, servers: list) -> None:
    _three_batches(db, servers)
    _sql(db, "DELETE FROM durable_log WHERE bucket = 'd' AND seq = 2")
    _refused(db, "bucket 'd'", "missing records 2 to 2")
    assert ledger(_accepted(db, servers, "records 2 to 3 are lost")) == ["a1", "a2"]


def test_a_missing_tail_refuses_to_start(db: Path, servers: list) -> None:
    """The hostile tester's DELETE ... WHERE seq > N: the head says the log went further."""
    _three_batches(db, servers)
    _sql(db, "DELETE FROM durable_log WHERE bucket = 'd' AND seq > 1")
    _refused(db, "bucket 'd'", "ends at record 1, but records up to 3 were committed")
    assert ledger(_accepted(db, servers, "records 2 to 3 are lost")) == ["a1", "a2"]


def test_a_damaged_snapshot_refuses_to_start(db: Path, servers: list) -> None:
    _three_batches(db, servers)
    servers.append(server := start(db))
    assert server.stop() == 0  # snapshots
    _sql(db, "UPDATE durable_snapshots SET state = X'90' WHERE bucket = 'd'")
    _refused(db, "snapshot of durable bucket 'd' is damaged")
    assert ledger(_accepted(db, servers, "starts empty")) == []


def test_quarantine_serves_the_other_buckets_and_keeps_the_damaged_one(
    db: Path, servers: list
) -> None:
    _three_batches(db, servers, other=True)
    _sql(db, "DELETE FROM durable_log WHERE bucket = 'd' AND seq = 3")
    servers.append(server := start(db, "--quarantine-damaged"))
    assert ledger(server, "e") == ["e1"]
    with server.client() as client:
        info = client.bucket_info("d")
        assert "quarantined" in info["broken"] and "ends at record 2" in info["broken"]
        with pytest.raises(bucketly.UnknownHandler, match="quarantined"):
            client.send("d", "x")
            client.flush()
        assert any(e["event"] == "bucket_quarantined" for e in client.audit())
    server.kill()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM durable_log WHERE bucket = 'd'").fetchone() == (2,)
    conn.close()
    _refused(db, "bucket 'd'")  # untouched: still refused without an option


def test_the_two_ways_out_exclude_each_other(db: Path) -> None:
    code, logs = run_to_exit(db, "--accept-data-loss", "--quarantine-damaged")
    assert code == 2 and "exclude each other" in logs


# -- the WAL ---------------------------------------------------------------------------------------


def _wal_frames(db: Path) -> tuple[bytes, int]:
    wal = db.with_name(db.name + "-wal").read_bytes()
    (page_size,) = struct.unpack(">I", wal[8:12])
    return wal, page_size


def _flip_wal_byte(db: Path, frame: int) -> None:
    """Flip one byte in the page of WAL frame ``frame`` (from the end when negative)."""
    wal, page_size = _wal_frames(db)
    size = FRAME_HEADER + page_size
    frames = (len(wal) - WAL_HEADER) // size
    index = frame % frames
    offset = WAL_HEADER + index * size + FRAME_HEADER + page_size // 2
    data = bytearray(wal)
    data[offset] ^= 0xFF
    db.with_name(db.name + "-wal").write_bytes(bytes(data))


def test_a_flipped_wal_byte_after_kill_9_refuses_to_start(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client(batch_size=100) as client:
        client.create_bucket("d", "Ledger", durable=True)
        for k in range(0, 2_000, 100):
            client.send_many("d", list(range(k, k + 100)))
            client.flush()  # one commit each: 20 transactions in the WAL
    server.kill()
    _wal, page_size = _wal_frames(db)
    frames = (len(_wal) - WAL_HEADER) // (FRAME_HEADER + page_size)
    _flip_wal_byte(db, frames // 2)  # among the sends, after the bucket's creation
    logs = _refused(db, "has lost its last", "committed write transactions", bucket=False)
    assert "-wal" in logs
    server = _accepted(db, servers, "had lost its last")
    kept = ledger(server)
    assert kept == list(range(len(kept))) and len(kept) < 2_000  # a prefix, and said so


def test_a_lost_bucket_definition_refuses_to_start(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("late", "Ledger")  # the last transaction
    server.kill()
    _flip_wal_byte(db, -1)
    _refused(db, "has lost its last 1 committed write transactions", bucket=False)
    server = _accepted(db, servers)
    with server.client() as client:
        assert "late" not in [b["name"] for b in client.buckets()]


def test_losing_the_first_transactions_is_not_taken_for_a_new_file(
    db: Path, servers: list
) -> None:
    """Its migrations run again and give it a new id: the mark then names another file."""
    _three_batches(db, servers)
    _flip_wal_byte(db, 1)
    _refused(db, "belongs to another database file", "lost its first transactions",
             bucket=False)
    server = _accepted(db, servers, "had lost its last")
    with server.client() as client:
        assert client.buckets() == []


def test_a_new_file_replaces_the_mark_of_a_deleted_one(db: Path, servers: list) -> None:
    _three_batches(db, servers)
    db.unlink()
    db.with_name(db.name + "-wal").unlink()
    servers.append(server := start(db))  # a new, empty file: its mark is not a loss
    assert any("belonged to another database file" in line for line in server.logs)
