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
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DataLossDetected, StorageError, UnknownUser, UserExists
from ..lograte import LogLimiter
from ..protocol.messages import pack, unpack
from . import journal
from .mark import MarkFile
from .passwords import hash_password
from .rows import INITIAL_ADMIN, AuditEntry, BucketRow, TokenRow, UserRow, grants_column
from .schema import MIGRATIONS

__all__ = ["Database"]

log = logging.getLogger("bucketly.store")

T = TypeVar("T")

#: Pages (4 KiB) the write-ahead log may hold before SQLite copies them into the file. SQLite's
#: default, 1,000, checkpoints a durable bucket taking a million events a second a dozen times a
#: second; 8,000 (up to 32 MiB of WAL) took 7% less server CPU per durable event (0.62 -> 0.57
#: CPU-s per million events, bench/run.py's workload).
WAL_AUTOCHECKPOINT_PAGES = 8000


class Database:
    """The database file. Create it, then ``open()`` it; ``await write(fn)`` to change it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.buckets: dict[str, BucketRow] = {}
        self.users: dict[str, UserRow] = {}
        self.tokens: dict[int, TokenRow] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bucketly-db")
        self._conn: sqlite3.Connection | None = None
        #: Set by an I/O error: the next write starts from a new connection (see _write).
        self._reopen = False
        #: A failing write is logged at once, then at most once a minute while writes keep
        #: failing (each caller is told anyway), so a full disk does not flood the log.
        self._failure_log = LogLimiter()
        self._mark = MarkFile(self.path)
        self._file_id = ""
        #: Write transactions the file has committed (``file_mark``; the mark file follows).
        self.commits = 0
        #: Set by ``open(accept_loss=True)``: commits the file had lost, as its mark told.
        self.lost_commits = 0

    # -- start-up, on the writer thread -------------------------------------------------------

    def open(self, *, accept_loss: bool = False) -> None:
        """Open (creating if missing), migrate, check and load the file.

        Raises ``StorageError`` when it cannot, and ``DataLossDetected`` when the file has lost
        committed transactions (its mark file is ahead of it), unless ``accept_loss``: then
        ``lost_commits`` says how many, and the mark is moved back to the file.
        """
        self._executor.submit(self._open, accept_loss).result()

    def _open(self, accept_loss: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            conn = self._connect()
            self._conn = conn
            self._migrate(conn)
            self._check_mark(conn, accept_loss, existed)
            self._load(conn)
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open database file {str(self.path)!r}: {exc}") from None

    def _check_mark(self, conn: sqlite3.Connection, accept_loss: bool, existed: bool) -> None:
        self._file_id, self.commits = conn.execute(
            "SELECT file_id, commits FROM file_mark"
        ).fetchone()
        mark = self._mark.read()
        if mark is None:
            if existed:
                log.warning(
                    "no mark file %s beside the database file (a copy, or a file from before "
                    "0.2): it is written now, and losses are detected from here on",
                    self._mark.path,
                )
        elif mark.file_id != self._file_id:
            # A new file, or a file that lost the transaction that gave it its id (its
            # migrations then ran again, with a new id): only the first is ordinary.
            if existed and not accept_loss:
                raise DataLossDetected(
                    f"the mark file {str(self._mark.path)!r} belongs to another database file "
                    f"than {str(self.path)!r}: either that file was replaced by another, or "
                    "it has lost its first transactions (its -wal file damaged or deleted), "
                    "and with them everything after. If you replaced it on purpose, delete "
                    "the mark file; otherwise restore the file with its -wal from a backup, "
                    "or start with --accept-data-loss to go on with what is left "
                    "(durability.md, 'Damage and repair')"
                )
            if existed:
                self.lost_commits = mark.commits
            log.warning(
                "the mark file %s belonged to another database file: replaced", self._mark.path
            )
        elif mark.commits > self.commits:
            lost = mark.commits - self.commits
            if not accept_loss:
                raise DataLossDetected(
                    f"database file {str(self.path)!r} has lost its last {lost} committed "
                    f"write transactions: it has {self.commits}, its mark file "
                    f"{str(self._mark.path)!r} says {mark.commits}. Its -wal file was "
                    "damaged, deleted or replaced, or the file was restored from an older "
                    "copy; what those transactions wrote (acknowledged durable sends, bucket "
                    "definitions, users, grants) is gone. Restore the file with its -wal from "
                    "a backup, or start with --accept-data-loss to go on without them "
                    "(durability.md, 'Damage and repair')"
                )
            self.lost_commits = lost
        self._mark.write(self._file_id, self.commits)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a change (a configuration change, a durable bucket's events) is on disk, WAL
        # fsynced, when the client is told it succeeded.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # Debian's SQLite zeroes every freed page (SECURE_DELETE): compacting a durable log
        # after a snapshot then writes the whole deleted log again, as zeros (a million-event
        # snapshot: 0.23 s -> 0.07 s with FAST). FAST still zeroes what it rewrites anyway;
        # deleted data is not a secret a database file can keep (docs/security.md).
        conn.execute("PRAGMA secure_delete=FAST")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        return conn

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
            row[0]: BucketRow(
                row[0], row[1], unpack(row[2]), row[3], row[4], row[5],
                None if row[6] is None else unpack(row[6]),
            )
            for row in conn.execute(
                "SELECT name, handler, config, persistence, created_at, snapshot_interval, "
                "partition FROM buckets"
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
        self.tokens = {
            row[0]: TokenRow(
                row[0], row[1], row[2], bytes(row[3]), row[4],
                None if row[5] is None else frozenset((p, pat) for p, pat in unpack(row[5])),
                row[6],
            )
            for row in conn.execute(
                "SELECT id, user, name, secret_hash, created_at, grants, expires_at FROM tokens"
            )
        }

    # -- writes ---------------------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one immediate transaction on the writer thread; return its result.

        Raises ``StorageError`` (and rolls back) if SQLite fails, so the caller can refuse the
        request and leave its in-memory state untouched.
        """
        return await self.write_soon(fn)

    def write_soon(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """``write(fn)``, handed to the writer thread now rather than when awaited: the caller
        can go on working on the event loop while the transaction runs (the durable log
        applies one commit's records while the next commit is written). Await the future for
        the result or the ``StorageError``."""
        return asyncio.get_running_loop().run_in_executor(self._executor, self._write, fn)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            with _transaction(conn):
                result = fn(conn)
                # Counted in the same transaction, so a lost transaction is a missing count.
                conn.execute("UPDATE file_mark SET commits = commits + 1")
                (commits,) = conn.execute("SELECT commits FROM file_mark").fetchone()
        except sqlite3.Error as exc:
            if _is_io_error(exc):
                self._reopen = True
            if self._failure_log.ready():
                log.error("database write failed: %s", exc)
            raise StorageError(f"could not write the database file: {exc}") from None
        self.commits = commits
        try:
            self._mark.write(self._file_id, commits)
        except OSError as exc:
            # The transaction is committed; only the check at the next start is weaker.
            log.error("could not write the mark file %s: %s", self._mark.path, exc)
        return result

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StorageError("the database file is closed")
        if self._reopen:
            # After an I/O error (disk full, EIO), SQLite's view of the file is not trusted:
            # nothing is retried on that connection, a new one reads the file (and its WAL)
            # afresh. Failing to reopen fails this write; the next one tries again.
            try:
                new = self._connect()
            except sqlite3.Error as exc:
                raise StorageError(f"could not reopen the database file: {exc}") from None
            self._reopen = False
            self._conn = new
            try:
                conn.close()
            except sqlite3.Error:
                pass
            log.info("reopened the database file %s after a write error", self.path)
            conn = new
        return conn

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer thread, outside a transaction (start-up reads)."""
        loop = asyncio.get_running_loop()

        def run() -> T:
            try:
                return fn(self._connection())
            except sqlite3.Error as exc:
                raise StorageError(f"could not read the database file: {exc}") from None

        return await loop.run_in_executor(self._executor, run)

    # -- the operations the server needs ------------------------------------------------------

    async def insert_bucket(self, row: BucketRow) -> None:
        def insert(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO buckets (name, handler, config, persistence, created_at, "
                "snapshot_interval, partition) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row.name, row.handler, pack(row.config), row.persistence, row.created_at,
                    row.snapshot_interval, None if row.partition is None else pack(row.partition),
                ),
            )
            # A new bucket's journal starts empty, whatever a bucket of that name left.
            journal.drop_bucket(c, row.name)

        await self.write(insert)
        self.buckets[row.name] = row

    async def delete_bucket(self, name: str) -> None:
        """Delete the bucket's definition and, in the same transaction, its durable state."""

        def delete(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM buckets WHERE name = ?", (name,))
            journal.drop_bucket(c, name)

        await self.write(delete)
        self.buckets.pop(name, None)

    async def set_bucket_persistence(
        self, name: str, persistence: str, snapshot: tuple[Any, ...] | None = None
    ) -> None:
        """Switch the bucket's persistence level (``rows.PERSISTENCE_LEVELS``): drop its
        journal and snapshot and, if given, store ``snapshot`` (a ``journal.snapshot_row``) as
        its new one (a durable bucket's journal starts there); all in one transaction."""

        def change(c: sqlite3.Connection) -> None:
            c.execute("UPDATE buckets SET persistence = ? WHERE name = ?", (persistence, name))
            journal.drop_bucket(c, name)
            if snapshot is not None:
                journal.write_snapshot(c, snapshot)
                if persistence == "durable":
                    journal.note_head(c, name, snapshot[1])

        await self.write(change)
        self.buckets[name].persistence = persistence

    async def set_snapshot_interval(self, name: str, seconds: float | None) -> None:
        """Set the seconds between a snapshot-level bucket's snapshots (None: the default)."""

        def change(c: sqlite3.Connection) -> None:
            c.execute("UPDATE buckets SET snapshot_interval = ? WHERE name = ?", (seconds, name))

        await self.write(change)
        self.buckets[name].snapshot_interval = seconds

    async def set_password(self, user: str, password_hash: str) -> list[int]:
        """Change the password and, in the same transaction, revoke every token of the user (a
        password change is how a leak is answered). Bumps the user's ``epoch``. Returns the ids
        of the tokens revoked."""

        def change(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE users SET password_hash = ?, default_password = 0 WHERE name = ?",
                (password_hash, user),
            )
            c.execute("DELETE FROM tokens WHERE user = ?", (user,))

        await self.write(change)
        row = self.users[user]
        row.password_hash = password_hash
        row.default_password = False
        row.epoch += 1
        revoked = [token.id for token in self.tokens.values() if token.user == user]
        for token_id in revoked:
            del self.tokens[token_id]
        return revoked

    async def create_user(self, name: str, password_hash: str) -> UserRow:
        row = UserRow(name, password_hash, False, time.time())

        def insert(c: sqlite3.Connection) -> None:
            if c.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserExists(f"user {name!r} exists already")
            c.execute(
                "INSERT INTO users VALUES (?, ?, 0, ?)", (name, password_hash, row.created_at)
            )

        await self.write(insert)
        self.users[name] = row
        return row

    async def delete_user(self, name: str) -> None:
        """Delete the user; their grants and tokens go with them (ON DELETE CASCADE)."""

        def delete(c: sqlite3.Connection) -> None:
            if c.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise UnknownUser(f"no user named {name!r}")

        await self.write(delete)
        self.users.pop(name, None)
        for token_id in [t.id for t in self.tokens.values() if t.user == name]:
            del self.tokens[token_id]

    async def grant(self, user: str, permission: str, pattern: str) -> None:
        await self.write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO grants VALUES (?, ?, ?)", (user, permission, pattern)
            )
        )
        self.users[user].grants.add((permission, pattern))

    async def revoke(self, user: str, permission: str, pattern: str) -> bool:
        """Remove the grant; False if the user did not hold it."""
        cursor = await self.write(
            lambda c: c.execute(
                "DELETE FROM grants WHERE user = ? AND permission = ? AND pattern = ?",
                (user, permission, pattern),
            )
        )
        self.users[user].grants.discard((permission, pattern))
        return bool(cursor.rowcount)

    async def create_token(
        self,
        user: str,
        name: str | None,
        secret_hash: bytes,
        grants: frozenset[tuple[str, str]] | None = None,
        expires_at: float | None = None,
    ) -> TokenRow:
        created_at = time.time()
        cursor = await self.write(
            lambda c: c.execute(
                "INSERT INTO tokens (user, name, secret_hash, created_at, grants, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (user, name, secret_hash, created_at, grants_column(grants), expires_at),
            )
        )
        assert cursor.lastrowid is not None
        row = TokenRow(cursor.lastrowid, user, name, secret_hash, created_at, grants, expires_at)
        self.tokens[row.id] = row
        return row

    async def delete_token(self, token_id: int) -> None:
        await self.delete_tokens([token_id])

    async def delete_tokens(self, token_ids: list[int]) -> None:
        await self.write(
            lambda c: c.executemany("DELETE FROM tokens WHERE id = ?", [(i,) for i in token_ids])
        )
        for token_id in token_ids:
            self.tokens.pop(token_id, None)

    async def append_audit(self, entries: list[AuditEntry], keep: int) -> None:
        """Append entries, then trim the table to its newest ``keep`` rows."""

        def append(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT INTO audit (at, event, user, peer, detail, count) VALUES (?,?,?,?,?,?)",
                [(e.at, e.event, e.user, e.peer, e.detail, e.count) for e in entries],
            )
            c.execute(
                "DELETE FROM audit WHERE id <= (SELECT max(id) FROM audit) - ?", (keep,)
            )

        await self.write(append)

    async def read_audit(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` audit entries, newest first."""

        def read(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT id, at, event, user, peer, detail, count FROM audit "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            keys = ("id", "at", "event", "user", "peer", "detail", "count")
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self.write(read)

    def close(self) -> None:
        """Close the file (after every pending write has finished)."""

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._mark.close()

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)


#: SQLite primary result codes after which the connection is reopened rather than reused.
_IO_ERRORS = frozenset({10, 11, 13, 14, 26})  # IOERR, CORRUPT, FULL, CANTOPEN, NOTADB


def _is_io_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
    if code is None:
        return isinstance(exc, sqlite3.OperationalError)
    return code & 0xFF in _IO_ERRORS


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
