"""The journal's tables: every statement that reads or writes durable buckets' records.

The journal of a durable bucket is its snapshot (``durable_snapshots``, one row a bucket), the
records committed after it (``durable_log``: one row per send, numbered 1, 2, ... per bucket, each
with a CRC-32 of its payload and of every field that says where it belongs), and its head
(``durable_heads``: the newest record ever committed, which recovery must reach). The tables kept
the names they had before the word "journal" was (``log`` means the logger in the code).

A snapshot-level bucket (buckets/snapshots.py) has a row in ``durable_snapshots`` too, at record
0, and neither records nor a head.

Each function takes the SQLite connection of the caller's transaction: callers are
``buckets.journal`` (commits, snapshots), ``buckets.recovery`` and ``Database`` (creating,
deleting and switching buckets), and each statement is written here once.
"""

from __future__ import annotations

import sqlite3
import time
import zlib
from collections.abc import Collection
from typing import Any

__all__ = [
    "INSERT_ROWS",
    "drop_bucket",
    "drop_orphans",
    "forget_head",
    "insert_records",
    "note_head",
    "read_head",
    "read_records",
    "read_snapshot",
    "record_checksum",
    "snapshot_checksum",
    "snapshot_row",
    "truncate",
    "write_snapshot",
]

#: Journal records inserted per SQL statement (6 parameters each; SQLite allows 32,766 per
#: statement). One statement per row would be a round trip through the GIL per row, which the
#: busy event loop may hold for a whole switch interval (5 ms) before the writer gets it back.
INSERT_ROWS = 500

_TABLES = ("durable_log", "durable_snapshots", "durable_heads")


def record_checksum(bucket: str, seq: int, producer: str | None, producer_seq: int | None,
                    payload: bytes) -> int:
    """CRC-32 of a journal record: its payload and every field that says where it belongs."""
    header = f"{bucket}\x00{seq}\x00{producer}\x00{producer_seq}".encode()
    return zlib.crc32(payload, zlib.crc32(header))


def snapshot_checksum(bucket: str, seq: int, events: int, state: bytes, producers: bytes,
                      state_version: int = 1) -> int:
    header = f"{bucket}\x00{seq}\x00{events}"
    if state_version != 1:  # so that snapshots written before state versions still match
        header += f"\x00v{state_version}"
    return zlib.crc32(producers, zlib.crc32(state, zlib.crc32(header.encode())))


def snapshot_row(bucket: str, seq: int, events: int, state: bytes,
                 producers: bytes, state_version: int = 1) -> tuple[Any, ...]:
    """A ``durable_snapshots`` row, its checksum and time included. ``state_version`` is the
    handler class's (``Handler.state_version``) whose ``snapshot()`` gave ``state``."""
    crc = snapshot_checksum(bucket, seq, events, state, producers, state_version)
    return (bucket, seq, events, state, producers, crc, time.time(), state_version)


# -- writing ----------------------------------------------------------------------------------


def insert_records(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``(bucket, seq, producer, producer_seq, payload)`` rows, checksummed."""
    for first in range(0, len(rows), INSERT_ROWS):
        chunk = rows[first : first + INSERT_ROWS]
        conn.execute(
            "INSERT INTO durable_log (bucket, seq, producer, producer_seq, events, checksum) "
            "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in (*row, record_checksum(*row))],
        )


def write_snapshot(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    """Store ``row`` (``snapshot_row``) as the bucket's snapshot, replacing the one it had."""
    conn.execute(
        "INSERT OR REPLACE INTO durable_snapshots "
        "(bucket, seq, events, state, producers, checksum, created_at, state_version) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )


def drop_records_after(conn: sqlite3.Connection, bucket: str, seq: int) -> None:
    conn.execute("DELETE FROM durable_log WHERE bucket = ? AND seq > ?", (bucket, seq))


def drop_records_through(conn: sqlite3.Connection, bucket: str, seq: int) -> None:
    """Delete the records a snapshot at ``seq`` covers (compaction)."""
    conn.execute("DELETE FROM durable_log WHERE bucket = ? AND seq <= ?", (bucket, seq))


def note_head(conn: sqlite3.Connection, bucket: str, seq: int) -> None:
    """Record that ``bucket``'s newest committed record is ``seq``.

    Recovery must reach it: a journal that ends before its head has lost acknowledged records.
    """
    conn.execute(
        "INSERT INTO durable_heads (bucket, seq) VALUES (?, ?) "
        "ON CONFLICT (bucket) DO UPDATE SET seq = excluded.seq",
        (bucket, seq),
    )


def forget_head(conn: sqlite3.Connection, bucket: str) -> None:
    conn.execute("DELETE FROM durable_heads WHERE bucket = ?", (bucket,))


def truncate(conn: sqlite3.Connection, bucket: str, seq: int, *, snapshot: bool = False) -> None:
    """Delete ``bucket``'s records after ``seq`` (and its snapshot), and make ``seq`` its head."""
    drop_records_after(conn, bucket, seq)
    if snapshot:
        conn.execute("DELETE FROM durable_snapshots WHERE bucket = ?", (bucket,))
    if seq:
        note_head(conn, bucket, seq)
    else:
        forget_head(conn, bucket)


def drop_bucket(conn: sqlite3.Connection, bucket: str) -> None:
    """Delete the whole journal of ``bucket``: records, snapshot and head."""
    for table in _TABLES:
        conn.execute(f"DELETE FROM {table} WHERE bucket = ?", (bucket,))


def drop_orphans(conn: sqlite3.Connection, keep: Collection[str]) -> list[str]:
    """Delete the journal rows of every bucket not in ``keep``; return their names."""
    names = []
    for table in _TABLES:
        # One index probe per bucket name, instead of a scan of the whole journal.
        name = ""
        while True:
            found = conn.execute(
                f"SELECT bucket FROM {table} WHERE bucket > ? ORDER BY bucket LIMIT 1",
                (name,),
            ).fetchone()
            if found is None:
                break
            name = found[0]
            if name not in keep:
                names.append(name)
                conn.execute(f"DELETE FROM {table} WHERE bucket = ?", (name,))
    return names


# -- reading ----------------------------------------------------------------------------------


def read_head(conn: sqlite3.Connection, bucket: str) -> int:
    """The newest record ever committed for ``bucket`` (0: none)."""
    row = conn.execute("SELECT seq FROM durable_heads WHERE bucket = ?", (bucket,)).fetchone()
    return row[0] if row is not None else 0


def read_snapshot(conn: sqlite3.Connection, bucket: str) -> tuple[Any, ...] | None:
    """``(seq, events, state, producers, checksum, state_version, created_at)`` of
    ``bucket``'s snapshot, if it has one."""
    row = conn.execute(
        "SELECT seq, events, state, producers, checksum, state_version, created_at "
        "FROM durable_snapshots WHERE bucket = ?",
        (bucket,),
    ).fetchone()
    return tuple(row) if row is not None else None


def read_records(conn: sqlite3.Connection, bucket: str, first: int,
                 limit: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` records of ``bucket`` from ``first`` on, in order:
    ``(seq, producer, producer_seq, payload, checksum)``."""
    return conn.execute(
        "SELECT seq, producer, producer_seq, events, checksum FROM durable_log "
        "WHERE bucket = ? AND seq >= ? ORDER BY seq LIMIT ?",
        (bucket, first, limit),
    ).fetchall()
