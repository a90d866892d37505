"""The database file (SQLite): one writer thread, numbered migrations, an in-memory mirror.

Theory of operation: at start-up the whole configuration (buckets, users, grants) is read into
plain Python objects, which the server reads without touching SQLite. Every change goes through
``write()``: the function runs on the single writer thread inside ``BEGIN IMMEDIATE`` ...
``COMMIT`` (datasette's pattern), and only after the commit succeeds does the caller update the
mirror. So the file and the mirror cannot disagree, and nothing on the event loop waits for disk.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StorageError
from ..protocol.messages import pack, unpack
from .passwords import hash_password

__all__ = ["MIGRATIONS", "BucketRow", "Database", "UserRow"]

log = logging.getLogger("bucketly.store")

T = TypeVar("T")

#: Numbered schema migrations. Never edit a released one: append a new one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE buckets (
            name        TEXT PRIMARY KEY,
            handler     TEXT NOT NULL,
            config      BLOB NOT NULL,          -- MessagePack map
            durable     INTEGER NOT NULL DEFAULT 0,
            created_at  REAL NOT NULL
        );
        CREATE TABLE users (
            name              TEXT PRIMARY KEY,
            password_hash     TEXT NOT NULL,
            default_password  INTEGER NOT NULL DEFAULT 0,  -- still the initial admin/admin
            created_at        REAL NOT NULL
        );
        CREATE TABLE grants (
            user        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            permission  TEXT NOT NULL,
            pattern     TEXT NOT NULL,
            PRIMARY KEY (user, permission, pattern)
        );
        """,
    ),
]

#: The user created in an empty database file, and the password it starts with.
INITIAL_ADMIN = ("admin", "admin")


@dataclass(slots=True)
class BucketRow:
    name: str
    handler: str
    config: dict[str, Any]
    durable: bool
    created_at: float


@dataclass(slots=True)
class UserRow:
    name: str
    password_hash: str
    default_password: bool
    created_at: float
    #: (permission, bucket-name pattern) pairs; ``("*", "*")`` is everything.
    grants: set[tuple[str, str]] = field(default_factory=set)


class Database:
    """The database file. Create it, then ``open()`` it; ``await write(fn)`` to change it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.buckets: dict[str, BucketRow] = {}
        self.users: dict[str, UserRow] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bucketly-db")
        self._conn: sqlite3.Connection | None = None

    # -- start-up, on the writer thread -------------------------------------------------------

    def open(self) -> None:
        """Open (creating if missing), migrate and load the file. Raises ``StorageError``."""
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a configuration change is on disk when the client is told it succeeded.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn = conn
            self._migrate(conn)
            self._load(conn)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open database file {str(self.path)!r}: {exc}") from None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        newest = MIGRATIONS[-1][0]
        if version > newest:
            raise StorageError(
                f"database file {str(self.path)!r} has schema version {version}, newer than "
                f"this bucketly knows ({newest}); upgrade bucketly"
            )
        for number, sql in MIGRATIONS:
            if number <= version:
                continue
            log.info("migrating database file %s to schema version %d", self.path, number)
            with _transaction(conn):
                # One statement at a time: executescript() would COMMIT our transaction.
                for statement in filter(str.strip, sql.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        if conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0:
            name, password = INITIAL_ADMIN
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO users VALUES (?, ?, 1, ?)",
                    (name, hash_password(password), time.time()),
                )
                conn.execute("INSERT INTO grants VALUES (?, '*', '*')", (name,))
            log.warning("created user %r with the default password; change it", name)

    def _load(self, conn: sqlite3.Connection) -> None:
        self.buckets = {
            row[0]: BucketRow(row[0], row[1], unpack(row[2]), bool(row[3]), row[4])
            for row in conn.execute(
                "SELECT name, handler, config, durable, created_at FROM buckets"
            )
        }
        self.users = {
            row[0]: UserRow(row[0], row[1], bool(row[2]), row[3])
            for row in conn.execute(
                "SELECT name, password_hash, default_password, created_at FROM users"
            )
        }
        for user, permission, pattern in conn.execute(
            "SELECT user, permission, pattern FROM grants"
        ):
            self.users[user].grants.add((permission, pattern))

    # -- writes ---------------------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one immediate transaction on the writer thread; return its result.

        Raises ``StorageError`` (and rolls back) if SQLite fails, so the caller can refuse the
        request and leave its in-memory state untouched.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._write, fn)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageError("the database file is closed")
        try:
            with _transaction(conn):
                return fn(conn)
        except sqlite3.Error as exc:
            log.error("database write failed: %s", exc)
            raise StorageError(f"could not write the database file: {exc}") from None

    # -- the operations the server needs ------------------------------------------------------

    async def insert_bucket(self, row: BucketRow) -> None:
        await self.write(
            lambda c: c.execute(
                "INSERT INTO buckets VALUES (?, ?, ?, ?, ?)",
                (row.name, row.handler, pack(row.config), int(row.durable), row.created_at),
            )
        )
        self.buckets[row.name] = row

    async def delete_bucket(self, name: str) -> None:
        await self.write(lambda c: c.execute("DELETE FROM buckets WHERE name = ?", (name,)))
        self.buckets.pop(name, None)

    async def set_password(self, user: str, password_hash: str) -> None:
        await self.write(
            lambda c: c.execute(
                "UPDATE users SET password_hash = ?, default_password = 0 WHERE name = ?",
                (password_hash, user),
            )
        )
        row = self.users[user]
        row.password_hash = password_hash
        row.default_password = False

    def close(self) -> None:
        """Close the file (after every pending write has finished)."""

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
