"""The mark file: how far the database file had got, kept outside it.

SQLite's write-ahead log protects each transaction with a checksum, and that is the trouble: when
a frame of ``DATABASE-wal`` is damaged, or the file is deleted or replaced by an older copy,
SQLite opens the database as it was before the first bad frame and says nothing. The committed
transactions after it (acknowledged durable sends, a bucket just created) are gone without a
trace *inside* the database, because the proof that they existed was in the frames that went.

So every write transaction (``Database._write``) also adds one to a counter in the database
(table ``file_mark``), and once it has committed, the new count is written to ``DATABASE-mark``
beside the file. At start-up, a database whose counter is behind its mark file has lost
committed transactions: ``Database.open`` refuses it (``DataLossDetected``) unless told to accept
the loss. The mark file carries the database's random id, so the mark of another file (a copy
moved in its place) is recognised and replaced, not taken for a loss.

The mark is written with ``pwrite`` and not fsynced: a process killed with SIGKILL loses nothing
that was written (the kernel still has it), so after ``kill -9`` the check is exact. After a power
failure the mark may be older than the database, never newer: the check then misses losses from
the last seconds before the failure, and never reports one that did not happen.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["Mark", "MarkFile", "mark_path"]

#: The record: fixed width, so that each write replaces the last one whole, in place.
_FORMAT = "bucketly-mark 1 {file_id} {commits:020d}\n"
_PATTERN = re.compile(rb"bucketly-mark 1 ([0-9a-f]{1,64}) ([0-9]{20})\n")


def mark_path(database: Path) -> Path:
    """``DATABASE-mark``, beside ``DATABASE-wal`` and ``DATABASE-shm``."""
    return database.with_name(database.name + "-mark")


class Mark:
    """What a mark file says: the database it belongs to, and its count of commits."""

    __slots__ = ("commits", "file_id")

    def __init__(self, file_id: str, commits: int) -> None:
        self.file_id = file_id
        self.commits = commits


class MarkFile:
    """The open mark file of one database. Used only on the database's writer thread."""

    def __init__(self, database: Path) -> None:
        self.path = mark_path(database)
        self._fd: int | None = None

    def read(self) -> Mark | None:
        """The mark as found (None: no mark file, or not one bucketly wrote)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        match = _PATTERN.fullmatch(data)
        if match is None:
            return None
        return Mark(match[1].decode(), int(match[2]))

    def write(self, file_id: str, commits: int) -> None:
        """Record ``commits`` (after that many transactions have committed)."""
        if self._fd is None:
            # Emptied once; every later record has the same length and overwrites the last.
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.pwrite(self._fd, _FORMAT.format(file_id=file_id, commits=commits).encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
