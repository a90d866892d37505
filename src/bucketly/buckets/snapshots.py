"""Snapshot-level buckets: their state saved every few seconds and at shutdown.

Theory of operation. A bucket at the *snapshot* persistence level keeps its state in memory like
any other and, every ``snapshot_interval`` seconds in which it changed, saves it into the
database file: its handler's ``snapshot()``, encoded as a durable bucket's snapshot is
(``buckets.snapshot_codec``), as its row of ``durable_snapshots``, which one transaction
replaces (a crash mid-write leaves the previous one). At start-up it is restored from there
(``buckets.recovery``). There is no log: a kill -9 loses what came after the last snapshot, and a
planned stop (SIGTERM, SIGINT) loses nothing, because shutdown takes a last snapshot of every
bucket that changed, after the scheduled jobs' final runs.

Nothing is paid per event. A snapshot is taken between two batches (on the event loop, where
nothing else touches the bucket), and the event loop must not wait while a large state is
encoded: encoding holds the GIL for its whole length (ormsgpack never lets it go), so a worker
thread would stall the loop all the same. So, like Redis's BGSAVE, the snapshot is made in a
forked child process: ``fork()`` gives the child the memory as it is at that instant (copied on
write), the child calls ``snapshot()``, encodes, writes the bytes into a pipe and exits, while the
parent goes on applying events; a worker thread reads the pipe, and the database's writer thread
writes the row. The loop pays for ``fork()`` itself (copying page tables: about a millisecond
per 100 MB of memory). Where ``fork`` does not exist, or fails (say, no memory for the child),
the snapshot is encoded on the loop instead, and the log says so once.

A snapshot is not taken while one of the bucket's jobs runs (a running job may hold data it took
out of the state: a snapshot would not have it), as for durable buckets; the next tick tries
again. Switching a bucket between the three levels (``set_persistence``) and deleting it take
the same lock as a snapshot's write, so a snapshot never lands after the bucket changed level.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import BadArgument, HandlerError, StorageError, UnknownBucket
from ..lograte import LogLimiter
from ..store import journal as tables
from .faults import Faults
from .snapshot_codec import encode_snapshot

if TYPE_CHECKING:
    import sqlite3

    from ..store import Database
    from .journal import Journal
    from .runtime import Bucket

__all__ = [
    "DEFAULT_SNAPSHOT_INTERVAL",
    "MAX_SNAPSHOT_INTERVAL",
    "MIN_SNAPSHOT_INTERVAL",
    "BucketSnapshots",
    "Snapshots",
    "check_interval",
]

log = logging.getLogger("bucketly.snapshots")

#: Seconds between two snapshots of a snapshot-level bucket, unless its ``snapshot_interval``
#: says otherwise: what a kill -9 may lose at most. A minute, like Redis's most frequent
#: default ``save 60 10000``: often enough for counters that a flush job empties once a minute.
DEFAULT_SNAPSHOT_INTERVAL = 60.0
#: The shortest interval: below a second, a large state would be encoded back to back, the
#: child processes taking a core for little gain (use a durable bucket to lose nothing).
MIN_SNAPSHOT_INTERVAL = 1.0
#: The longest interval: a day. Past it a snapshot level is a restart-only level in disguise.
MAX_SNAPSHOT_INTERVAL = 86_400.0

_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
#: The child's reply on the pipe: a status byte, the state's length, then state and producers.
_HEADER = struct.Struct("!BQ")
_OK, _REFUSED = 0, 1


def check_interval(seconds: Any) -> float:
    """``seconds`` as a snapshot interval, or ``BadArgument`` saying the bounds."""
    if type(seconds) not in (int, float) or not (
        MIN_SNAPSHOT_INTERVAL <= seconds <= MAX_SNAPSHOT_INTERVAL
    ):
        raise BadArgument(
            f"snapshot_interval must be a number of seconds from {MIN_SNAPSHOT_INTERVAL:g} "
            f"to {MAX_SNAPSHOT_INTERVAL:g}, not {seconds!r}"
        )
    return float(seconds)


@dataclass(slots=True)
class BucketSnapshots:
    """Where a snapshot-level bucket's snapshots stand (``Bucket.snapshots``)."""

    interval: float
    #: Unix time of the snapshot in the database file (None: it has none yet).
    taken_at: float | None = None
    #: What the bucket had applied then (events, job runs): unchanged since, none is due.
    marker: tuple[int, int] | None = None
    #: Monotonic time of the last attempt, whatever came of it.
    tried_at: float = 0.0
    #: The state's size and how long the last one took, from the fork to its commit.
    size: int = 0
    seconds: float = 0.0
    count: int = 0
    error: str | None = None
    #: Set while a snapshot is being taken (in a child process or written).
    busy: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "interval_seconds": self.interval,
            "taken_at": self.taken_at,
            "age_seconds": None if self.taken_at is None else max(0.0, time.time() - self.taken_at),
            "events": self.marker[0] if self.marker is not None and self.taken_at else 0,
            "bytes": self.size,
            "seconds": self.seconds,
            "snapshots": self.count,
            "error": self.error,
        }


def _marker(bucket: Bucket) -> tuple[int, int]:
    return bucket.events, sum(runner.runs for runner in bucket.jobs.values())


class Snapshots:
    """The snapshot-level buckets of one server. ``start()`` it on the loop, ``await stop()``."""

    def __init__(self, db: Database, buckets: dict[str, Bucket], journal: Journal,
                 faults: Faults | None = None, *, fork: bool = True) -> None:
        self.db = db
        #: The server's live buckets (the same dict).
        self.buckets = buckets
        self.journal = journal
        self.fault = faults if faults is not None else Faults()
        #: Held by a snapshot's write and by every change of a bucket's level or its deletion.
        self.lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: The snapshot the timer is taking, which a stop lets finish.
        self._current: asyncio.Future[bool] | None = None
        self._fork_failed = LogLimiter()
        #: ``--snapshot-encoding fork`` (and a system that can).
        self._can_fork = fork and hasattr(os, "fork")
        # statistics
        self.taken = 0
        self.failed = 0
        self.forked = 0
        #: Time the event loop spent in fork() for the last snapshot, and at most.
        self.fork_seconds = 0.0
        self.fork_seconds_max = 0.0

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._maintain(), name="snapshots")

    async def stop_maintenance(self) -> None:
        """No more timed snapshots; one being taken is finished first."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._current is not None:
            with contextlib.suppress(Exception):
                await self._current
            self._current = None

    async def stop(self, skip: set[Bucket] | frozenset[Bucket] = frozenset()) -> None:
        """Snapshot every snapshot-level bucket that changed (but those in ``skip``), on the
        loop: nothing is sent any more."""
        await self.stop_maintenance()
        due = [
            bucket for bucket in self.buckets.values()
            if bucket.snapshots is not None and bucket not in skip and not bucket.broken
            and bucket.snapshots.marker != _marker(bucket)
        ]
        if due:
            log.info("shutdown: snapshotting %d snapshot-level buckets", len(due))
        for bucket in due:
            await self.take(bucket, fork=False)

    def statistics(self) -> dict[str, Any]:
        return {
            "snapshots": self.taken,
            "failed": self.failed,
            "forked": self.forked,
            "fork_seconds": self.fork_seconds,
            "fork_seconds_max": self.fork_seconds_max,
        }

    # -- taking one -------------------------------------------------------------------------------

    async def take(self, bucket: Bucket, *, fork: bool = True) -> bool:
        """Snapshot ``bucket`` now; True once it is in the database file.

        With ``fork``, encoded in a child process (the module's doc); else on the loop.
        False if it could not be (the reason is in ``bucket.snapshots.error`` and the log),
        or the bucket changed level meanwhile.
        """
        state = bucket.snapshots
        if state is None or state.busy:
            return False
        state.busy = True
        state.tried_at = time.monotonic()
        try:
            return await self._take(bucket, state, fork)
        finally:
            state.busy = False

    async def _take(self, bucket: Bucket, state: BucketSnapshots, fork: bool) -> bool:
        started = time.perf_counter()
        marker = _marker(bucket)
        events = bucket.events
        version = bucket.info.state_version if bucket.info is not None else 1
        try:
            if fork and self._can_fork:
                encoded = await self._encode_forked(bucket)
            else:
                encoded = None
            if encoded is None:
                encoded = encode_snapshot(bucket)
        except HandlerError as exc:
            return self._failed(bucket, state, f"cannot snapshot: {exc.message}")
        data, producers = encoded
        row = tables.snapshot_row(bucket.name, 0, events, data, producers, version)
        async with self.lock:
            if self.buckets.get(bucket.name) is not bucket or bucket.snapshots is not state:
                return False  # deleted, or another level now: this snapshot is not its own
            try:
                await self.db.write(partial(self._write, row))
            except StorageError as exc:
                return self._failed(bucket, state, f"could not write its snapshot: {exc.message}")
        state.taken_at = row[6]
        state.marker = marker
        state.size = len(data)
        state.seconds = time.perf_counter() - started
        state.count += 1
        state.error = None
        self.taken += 1
        log.debug("bucket %r: snapshot of %d bytes in %.3fs", bucket.name, len(data),
                  state.seconds)
        return True

    def _failed(self, bucket: Bucket, state: BucketSnapshots, message: str) -> bool:
        self.failed += 1
        if state.error != message:
            log.error("bucket %r: %s; its last snapshot (%s) is kept", bucket.name, message,
                      "none yet" if state.taken_at is None else
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.taken_at)))
        state.error = message
        return False

    def _write(self, row: tuple[Any, ...], conn: sqlite3.Connection) -> None:
        tables.write_snapshot(conn, row)
        self.fault("level_snapshot.before_commit")

    async def _encode_forked(self, bucket: Bucket) -> tuple[bytes, bytes] | None:
        """The bucket's encoded snapshot, made by a child process; None if none could be
        started (then the caller encodes on the loop)."""
        started = time.perf_counter()
        try:
            pid, reader = _fork_encoder(bucket)
        except OSError as exc:
            if self._fork_failed.ready():
                log.warning("snapshots: cannot start a child process (%s); encoding on the "
                            "event loop instead, which pauses it meanwhile", exc)
            return None
        self.forked += 1
        self.fork_seconds = time.perf_counter() - started
        self.fork_seconds_max = max(self.fork_seconds_max, self.fork_seconds)
        return await asyncio.to_thread(_collect, pid, reader, bucket.row.handler)

    # -- the timer --------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MIN_SNAPSHOT_INTERVAL / 2)
            now = time.monotonic()
            for bucket in list(self.buckets.values()):
                state = bucket.snapshots
                if (
                    state is None
                    or state.busy
                    or bucket.broken
                    or now - state.tried_at < state.interval
                    or state.marker == _marker(bucket)
                    or any(runner.running for runner in bucket.jobs.values())
                ):
                    continue
                # One at a time: two children would hold two copies of memory at once.
                self._current = asyncio.ensure_future(self.take(bucket))
                try:
                    await asyncio.shield(self._current)
                except Exception:
                    log.exception("bucket %r: internal error taking a snapshot", bucket.name)
                self._current = None

    # -- changing level ---------------------------------------------------------------------------

    async def set_persistence(self, bucket: Bucket, level: str) -> None:
        """Move ``bucket`` to persistence ``level`` (rows.PERSISTENCE_LEVELS)."""
        async with self.lock:
            if self.buckets.get(bucket.name) is not bucket:
                raise UnknownBucket(f"no bucket named {bucket.name!r}")
            current = bucket.row.persistence
            if level == current:
                return
            if current == "durable" or level == "durable":
                # In order with the bucket's durable records (journal.py).
                row = await self.journal.set_level(bucket, level)
                bucket.snapshots = None
                if level == "snapshot" and row is not None:
                    self.track(bucket, taken_at=row[6], size=len(row[3]))
                    assert bucket.snapshots is not None
                    bucket.snapshots.count = 1
                return
            if level == "memory":
                await self.db.set_bucket_persistence(bucket.name, "memory")
                bucket.snapshots = None
                return
            # memory -> snapshot: the first snapshot is taken by the next tick.
            await self.db.set_bucket_persistence(bucket.name, "snapshot")
            bucket.snapshots = BucketSnapshots(self.interval_of(bucket))

    async def set_interval(self, bucket: Bucket, seconds: float | None) -> None:
        async with self.lock:
            await self.db.set_snapshot_interval(bucket.name, seconds)
            if bucket.snapshots is not None:
                bucket.snapshots.interval = self.interval_of(bucket)

    def interval_of(self, bucket: Bucket) -> float:
        interval = bucket.row.snapshot_interval
        return DEFAULT_SNAPSHOT_INTERVAL if interval is None else interval

    def track(self, bucket: Bucket, *, taken_at: float | None = None, size: int = 0) -> None:
        """Start the snapshots of a snapshot-level bucket whose state is that of its snapshot
        of ``taken_at`` (restored at start-up, or just taken; None: it has none yet), the
        next one due after its interval."""
        bucket.snapshots = BucketSnapshots(
            self.interval_of(bucket), taken_at=taken_at,
            marker=_marker(bucket) if taken_at is not None else None,
            tried_at=time.monotonic(), size=size,
        )


def _fork_encoder(bucket: Bucket) -> tuple[int, int]:
    """Start a child that writes the bucket's encoded snapshot into a pipe; (pid, read end)."""
    reader, writer = os.pipe()
    # Blocked across fork(): the child must not run the server's handlers (they write into the
    # loop's wake-up socket, shared with the parent) before it has put the defaults back.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns of fork() in a process with threads: the child here runs
            # only the handler's snapshot() and the encoder, and takes no lock another thread
            # may hold (no logging, no database, no job: none runs during a snapshot).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(reader)
        os.close(writer)
        raise
    if pid == 0:  # the child: never returns
        _child(bucket, reader, writer, mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    os.close(writer)
    return pid, reader


def _child(bucket: Bucket, reader: int, writer: int, mask: Any) -> None:
    status = 1
    try:
        import gc

        gc.disable()  # a collection would touch (and so copy) every page of the heap
        # Only the pipe stays open: a socket the parent closes meanwhile must close for its
        # peer at once, not when the child exits.
        os.closerange(3, writer)
        os.closerange(writer + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            data, producers = encode_snapshot(bucket)
            parts = [_HEADER.pack(_OK, len(data)), data, producers]
        except HandlerError as exc:
            message = exc.message.encode()
            parts = [_HEADER.pack(_REFUSED, len(message)), message]
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(writer, view):]
        status = 0
    finally:
        os._exit(status)


def _collect(pid: int, reader: int, handler: str) -> tuple[bytes, bytes]:
    """Read what the child wrote and reap it (in a worker thread)."""
    chunks = []
    try:
        while chunk := os.read(reader, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(reader)
        _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if os.waitstatus_to_exitcode(status) != 0 or len(data) < _HEADER.size:
        raise HandlerError(
            f"the process encoding {handler}.snapshot() ended with status "
            f"{os.waitstatus_to_exitcode(status)} before it finished"
        )
    kind, size = _HEADER.unpack_from(data)
    body = data[_HEADER.size:]
    if kind == _REFUSED:
        raise HandlerError(body.decode(errors="replace"))
    return body[:size], body[size:]
