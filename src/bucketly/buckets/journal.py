"""Durable buckets: the journal, group commit, snapshots with compaction.

Theory of operation. A send to a durable bucket is not applied when it arrives. It becomes a
*record* (its events, encoded once, with the sender's producer id and sequence number) queued on
the ``Journal``, and the connection waits for it (its pipeline, in connection.py: the requests
after it on that connection still see it). One task, the *pump*, takes every record queued since
the last commit and writes them all in one transaction on the database's writer thread, whose
connection runs with ``synchronous=FULL``: the commit returns once the records are fsynced, and
sends from many connections share one fsync (group commit). Only then does the pump apply the
records to their handlers, on the event loop, in log order, and the connections acknowledge
them. When a commit fails, nothing is applied and every sender gets ``storage_error``. So a
durable bucket's handler state is always exactly "the latest snapshot, plus the log records
after it, applied in order", which is what recovery rebuilds at start-up.

Anything else that must be ordered with a bucket's records (a snapshot, switching durability on
or off, deleting the bucket) is an *action* in the same queue: the pump runs it once every record
queued before it is committed and applied, and before any record queued after it.

Snapshots. After ``snapshot_events`` logged events (or ``snapshot_seconds`` with any), a snapshot
action encodes the handler's ``snapshot()`` and, in ONE transaction, writes it and deletes the log
records it covers. A crash at any point leaves either the old snapshot and the whole log, or the
new snapshot and the log after it: both rebuild the same state, and recovery reads at most
``snapshot_events`` events of log however long the daemon has run.

Resends. Clients tag each batch with a producer id and a sequence number. A bucket remembers the
last sequence number it applied per producer (``Bucket.accept``), in memory for every bucket and,
for durable ones, in the log and in snapshots. A batch whose number is not above it is a resend of
a batch already applied: it is acknowledged and not applied again. For a durable bucket this is
decided before the batch is logged (a resend of a batch still being written waits for that
write's outcome), so the log holds exactly the batches that were applied, and recovery replays
every one of them.

Words: a durable bucket's *journal* is its snapshot and the records committed after it (the
tables of ``store.journal``); ``log`` is the logger. Recovery, which rebuilds a bucket from its
journal at start-up, is ``buckets.recovery``; the snapshot encoding is ``buckets.snapshot_codec``;
the per-bucket and per-send state is ``buckets.records``; the fault-injection points the tests
arm are ``buckets.faults``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BucketlyError, HandlerError, InternalError, StorageError, UnknownBucket
from ..histogram import BATCH_BOUNDS, LATENCY_BOUNDS, Histogram
from ..lograte import LogLimiter
from ..protocol.messages import pack
from ..store import journal as tables
from .faults import Faults
from .records import BucketJournal, Record
from .snapshot_codec import encode_snapshot

if TYPE_CHECKING:
    from ..store import Database
    from .runtime import Bucket

__all__ = ["Journal"]

log = logging.getLogger("bucketly.durability")

T = TypeVar("T")

#: Most payload bytes written in one transaction. A commit takes every queued record up to this
#: (and always at least one): large enough that group commit is never the bottleneck, small
#: enough that one transaction does not hold hundreds of megabytes in memory twice.
MAX_COMMIT_BYTES = 64 * 1024 * 1024


_Action = Callable[[], Awaitable[None]]


class _Commit:
    """One transaction of records, from the moment it is handed to the writer thread until
    its records are applied (``Journal._commit``)."""

    __slots__ = ("last", "resent", "started", "taken", "write", "written")

    def __init__(self, written: list[Record], resent: list[Record], last: dict[Bucket, int],
                 taken: dict[tuple[Bucket, str], int], write: asyncio.Future[None]) -> None:
        #: The records written, in log order, and the resends settled once they are applied.
        self.written = written
        self.resent = resent
        #: The last record number written, per bucket.
        self.last = last
        #: The highest producer seq written, per (bucket, producer).
        self.taken = taken
        self.write = write
        self.started = time.perf_counter()


class Journal:
    """The durable buckets of one server. ``start()`` it on the loop, ``await stop()`` it."""

    def __init__(
        self,
        db: Database,
        buckets: dict[str, Bucket],
        *,
        snapshot_events: int,
        snapshot_seconds: float,
        producer_retention: float,
        max_bucket_queue: int,
        faults: Faults | None = None,
    ) -> None:
        self.db = db
        #: The server's live buckets (the same dict): a record whose bucket has left it fails.
        self.buckets = buckets
        self.snapshot_events = snapshot_events
        self.snapshot_seconds = snapshot_seconds
        self.producer_retention = producer_retention
        #: Bytes the records queued for one bucket may take (``--max-bucket-queue``): beyond,
        #: ``full()`` says so and senders wait for ``room()``.
        self.max_bucket_queue = max_bucket_queue
        self.fault = faults if faults is not None else Faults()
        self._queue: deque[Record | _Action] = deque()
        self._wakeup: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._maintenance_task: asyncio.Task[None] | None = None
        #: A failing commit is logged at once, then at most once a minute while it keeps
        #: failing (each sender is told anyway), so a full disk does not flood the log.
        self._failure_log = LogLimiter()
        # statistics
        self.commits = 0
        self.records = 0
        self.events = 0
        self.commit_seconds = 0.0
        self.failed_commits = 0
        #: Payload bytes of the records committed.
        self.written_bytes = 0
        #: Each commit's time (its transaction, fsync included) and how many sends it carried.
        self.commit_latency = Histogram(LATENCY_BOUNDS)
        self.commit_sizes = Histogram(BATCH_BOUNDS)
        self.last_error: str | None = None
        #: Events of durable sends refused once queued, by error code (storage_error...).
        self.refused_events: collections.Counter[str] = collections.Counter()

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._pump_task = loop.create_task(self._pump(), name="durable log")
        self._maintenance_task = loop.create_task(self._maintain(), name="durable maintenance")

    def stop_maintenance(self) -> None:
        """No more time-based snapshots or clean-ups (the start of a shutdown)."""
        if self._maintenance_task is not None:
            self._maintenance_task.cancel()

    async def stop(self, skip: Collection[Bucket] = ()) -> None:
        """Finish everything queued, snapshot every durable bucket with new records (but those
        in ``skip``), stop."""
        self.stop_maintenance()
        if self._pump_task is None:
            return
        snapshots = [
            self._queue_snapshot(bucket)
            for bucket in self.buckets.values()
            if bucket.journal is not None
            and (bucket.journal.records_since_snapshot or bucket.journal.in_doubt)
            and not bucket.broken
            and bucket not in skip
        ]
        if snapshots:
            log.info("shutdown: snapshotting %d durable buckets", len(snapshots))
        await self.drain()
        self._pump_task.cancel()
        try:
            await self._pump_task
        except asyncio.CancelledError:
            pass
        self._pump_task = None

    async def drain(self) -> None:
        """Return once everything queued before this call is committed and applied (or failed)."""
        if self._pump_task is not None:
            await self.in_order(_nothing)

    def statistics(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "records": self.records,
            "events": self.events,
            "commit_seconds": self.commit_seconds,
            "failed_commits": self.failed_commits,
            "last_error": self.last_error,
            "queued": len(self._queue),
        }

    # -- the send path ----------------------------------------------------------------------------

    def append(
        self,
        bucket: Bucket,
        events: list[Any],
        producer: str | None = None,
        producer_seq: int | None = None,
        payload: bytes | None = None,
        cost: int = 0,
    ) -> asyncio.Future[dict[str, Any]]:
        """Queue a batch for ``bucket`` (durable). The future gives the send's result once the
        batch is on disk and applied, or raises the send's error (``storage_error``...).

        ``payload``: what to log, if the caller has it encoded already: a MessagePack map whose
        ``"events"`` are ``events`` (the send request as received). By default the events are
        encoded as an array. ``cost``: what the batch takes in memory, counted against
        ``max_bucket_queue`` until it is settled. Callers check ``full()`` first.
        """
        journal = bucket.journal
        assert journal is not None
        if producer is not None:
            pending = journal.pending.get((producer, producer_seq))  # type: ignore[arg-type]
            if pending is not None:
                return pending.future
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        record = Record(bucket, journal, events, pack(events) if payload is None else payload,
                        producer, producer_seq, future, cost)
        journal.queued += cost
        if producer is not None:
            journal.pending[(producer, producer_seq)] = record  # type: ignore[index]
        self._queue.append(record)
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    def full(self, bucket: Bucket) -> bool:
        """Whether the records queued for durable ``bucket`` take up its whole queue."""
        return bucket.journal is not None and bucket.journal.queued >= self.max_bucket_queue

    def room(self, bucket: Bucket) -> asyncio.Future[None]:
        """A future done once ``bucket``'s queue is no longer full (at once if it is not)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        journal = bucket.journal
        if journal is None or journal.queued < self.max_bucket_queue:
            future.set_result(None)
        else:
            journal.waiting.append(future)
        return future

    async def in_order(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` after everything queued so far and before anything queued after."""
        return await self._schedule(fn)

    def _schedule(self, fn: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        # Queued now, not when a task gets round to it: drain() relies on the order of calls.
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        async def action() -> None:
            try:
                result = await fn()
            except asyncio.CancelledError:
                future.cancel()
                raise
            except BaseException as exc:  # handed to whoever waits for the action
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)

        self._queue.append(action)
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    # -- the pump ---------------------------------------------------------------------------------

    async def _pump(self) -> None:
        queue = self._queue
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if not queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            head = queue[0]
            if type(head) is not Record:
                queue.popleft()
                await head()  # type: ignore[operator]
                continue
            records = self._take()
            try:
                await self._commit(records)
            except Exception:
                log.exception("durable log: internal error committing %d records", len(records))
                for record in records:
                    if not record.future.done():
                        self._settle(record, error=InternalError("internal server error"))

    def _take(self, *, overlapping: bool = False) -> list[Record]:
        """The records at the head of the queue, up to ``MAX_COMMIT_BYTES``.

        At least one, unless ``overlapping``: taken while the records of the commit before are
        not applied yet, then none from the first whose bucket is no longer durable on
        (``_prepare`` applies such a record at once, which must not be before those)."""
        queue = self._queue
        records: list[Record] = []
        size = 0
        while queue and type(queue[0]) is Record and size < MAX_COMMIT_BYTES:
            record = queue[0]
            if overlapping and record.bucket.journal is None:
                break
            queue.popleft()
            records.append(record)
            size += len(record.payload)
        return records

    async def _commit(self, records: list[Record]) -> None:
        """Log ``records`` in one transaction, then apply them, in order.

        Pipelined: once a commit is on disk, the records queued meanwhile are handed to the
        writer thread as the next commit *before* the first commit's records are applied, so
        that the event loop applies one commit while SQLite writes and fsyncs the next. The
        order is kept (each commit is applied once it is on disk and after the one before), and
        so is the promise: nothing is applied, or acknowledged, before it is on disk. The
        records taken for the next commit join ``records``, for the pump's error handling.
        """
        commit = self._prepare(records, {})
        while commit is not None:
            written = await self._written(commit)
            following = None
            if written and self._queue and type(self._queue[0]) is Record:
                more = self._take(overlapping=True)
                records.extend(more)
                # Taken after the commit before, which is noted (its seqs, its resends).
                following = self._prepare(more, commit.taken)
            try:
                if written:
                    self._applied(commit)
            except BaseException:
                if following is not None:
                    # Not left writing on its own: the pump settles its records next.
                    await asyncio.wait([following.write])
                raise
            commit = following

    def _prepare(self, records: list[Record],
                 taken: dict[tuple[Bucket, str], int]) -> _Commit | None:
        """Number ``records`` and hand them to the writer thread; None if none is to be
        written (each settled already: a resend, a deleted bucket, a bucket no longer durable).

        ``taken``: the highest producer seq per (bucket, producer) written but not yet
        applied (the commit before's), so that a resend of one of those is recognised too."""
        rows: list[tuple[Any, ...]] = []
        written: list[Record] = []
        resent: list[Record] = []
        last: dict[Bucket, int] = {}
        # The highest producer seq taken into this commit, per (bucket, producer).
        taken = dict(taken)
        for record in records:
            bucket = record.bucket
            if self.buckets.get(bucket.name) is not bucket:
                self._settle(record, error=UnknownBucket(f"bucket {bucket.name!r} was deleted"))
                continue
            journal = bucket.journal
            if journal is None:
                # Durability was switched off after the send was queued: it is an ordinary
                # send now, applied in its place in the order.
                self._apply(record)
                continue
            producer = record.producer
            if producer is not None:
                # Resends are recognised here, before logging, so that the log holds exactly
                # the batches that were applied: recovery replays all of them, whatever it
                # remembers of producers (which it forgets after --producer-retention).
                seq = record.producer_seq
                assert seq is not None
                previous = taken.get((bucket, producer))
                if (previous is not None and seq <= previous) or bucket.seen(producer, seq):
                    resent.append(record)
                    continue
                taken[(bucket, producer)] = seq
            seq = record.seq = last.get(bucket, journal.seq) + 1
            last[bucket] = seq
            rows.append((bucket.name, seq, record.producer, record.producer_seq, record.payload))
            written.append(record)
        if not written:
            for record in resent:
                self._settle(record, {"accepted": len(record.events), "duplicate": True})
            return None
        doubtful = [
            (b.name, b.journal.seq) for b in last if b.journal is not None and b.journal.in_doubt
        ]
        heads = [(b.name, seq) for b, seq in last.items()]
        write = self.db.write_soon(partial(self._write_records, rows, doubtful, heads))
        return _Commit(written, resent, last, taken, write)

    async def _written(self, commit: _Commit) -> bool:
        """Wait for ``commit``'s transaction; note it (True), or refuse its sends (False)."""
        try:
            await commit.write
        except StorageError as exc:
            self._commit_failed(commit.last, commit.written, exc)
            for record in commit.resent:
                self._settle(record, {"accepted": len(record.events), "duplicate": True})
            return False
        self.fault("commit.after_commit")
        self.commits += 1
        self.records += len(commit.written)
        elapsed = time.perf_counter() - commit.started
        self.commit_seconds += elapsed
        self.commit_latency.observe(elapsed)
        self.commit_sizes.observe(len(commit.written))
        for bucket in commit.last:
            assert bucket.journal is not None
            bucket.journal.in_doubt = False
        for record in commit.written:
            # Actions (the only things that replace bucket.journal) never run during a commit.
            journal = record.bucket.journal
            assert journal is not None
            journal.seq = record.seq
            journal.records_since_snapshot += 1
            journal.events_since_snapshot += len(record.events)
            journal.log_bytes += len(record.payload)
            self.written_bytes += len(record.payload)
            self.events += len(record.events)
        return True

    def _applied(self, commit: _Commit) -> None:
        """Apply the records of ``commit``, on disk now, in log order, and settle its sends."""
        for record in commit.written:
            self._apply(record)
        for record in commit.resent:
            self._settle(record, {"accepted": len(record.events), "duplicate": True})
        for bucket in commit.last:
            journal = bucket.journal
            if (
                journal is not None
                and not journal.snapshot_queued
                and journal.events_since_snapshot >= self.snapshot_events
            ):
                self._queue_snapshot(bucket)

    def _write_records(self, rows: list[tuple[Any, ...]], doubtful: list[tuple[str, int]],
                       heads: list[tuple[str, int]], conn: sqlite3.Connection) -> None:
        for name, seq in doubtful:
            tables.drop_records_after(conn, name, seq)
        tables.insert_records(conn, rows)
        for name, seq in heads:
            tables.note_head(conn, name, seq)
        self.fault("commit.before_commit")

    def _commit_failed(self, buckets: dict[Bucket, int], written: list[Record],
                       exc: StorageError) -> None:
        # Never retried: an fsync that failed once may "succeed" the second time after the
        # kernel dropped the pages. The senders are told, nothing is applied, and the next
        # commit starts from a reopened connection (Database does that after an I/O error).
        self.failed_commits += 1
        self.last_error = exc.message
        for bucket in buckets:
            if bucket.journal is not None:
                bucket.journal.in_doubt = True
        if self._failure_log.ready():
            log.error(
                "durable log: could not write %d records (%s); their sends were refused "
                "(%d failed commits so far)",
                len(written),
                exc.message,
                self.failed_commits,
            )
        for record in written:
            self._settle(
                record,
                error=StorageError(
                    f"bucket {record.bucket.name!r} is durable and its events could not be "
                    f"written to the database file, so they were not applied: {exc.message}"
                ),
            )

    def _apply(self, record: Record) -> None:
        bucket = record.bucket
        count = len(record.events)
        producer = record.producer
        seq = record.producer_seq
        if producer is not None and seq is not None and not bucket.accept(producer, seq):
            self._settle(record, {"accepted": count, "duplicate": True})
            return
        try:
            bucket.apply(record.events)
        except HandlerError as exc:
            self._settle(record, error=exc)
            return
        self._settle(record, {"accepted": count})

    def _settle(self, record: Record, result: dict[str, Any] | None = None,
                error: BucketlyError | None = None) -> None:
        journal = record.journal
        if record.cost:
            journal.queued -= record.cost
            record.cost = 0
            if journal.waiting and journal.queued < self.max_bucket_queue:
                waiting, journal.waiting = journal.waiting, []
                for waiter in waiting:
                    if not waiter.done():
                        waiter.set_result(None)
        if record.producer is not None:
            key = (record.producer, record.producer_seq)
            if record.journal.pending.get(key) is record:  # type: ignore[arg-type]
                del record.journal.pending[key]  # type: ignore[arg-type]
        future = record.future
        if future.done():
            return
        if error is not None:
            self.refused_events[error.code] += len(record.events)
            future.set_exception(error)
            future.exception()  # retrieved: a fire-and-forget sender may be gone
        else:
            future.set_result(result)  # type: ignore[arg-type]

    # -- durability on and off, deletion ---------------------------------------------------------

    async def set_level(self, bucket: Bucket, level: str) -> tuple[Any, ...] | None:
        """Make ``bucket`` durable (snapshotting its state first), or make a durable bucket
        ``memory`` (dropping its journal) or ``snapshot`` (its journal replaced by a snapshot
        of its state), in order with its records. Returns the snapshot row written, if any."""

        async def change() -> tuple[Any, ...] | None:
            if self.buckets.get(bucket.name) is not bucket:
                raise UnknownBucket(f"no bucket named {bucket.name!r}")
            durable = level == "durable"
            if durable == (bucket.journal is not None):
                return None
            if level == "memory":
                await self.db.set_bucket_persistence(bucket.name, "memory")
                bucket.journal = None
                return None
            state, producers = encode_snapshot(bucket)
            snapshot = tables.snapshot_row(
                bucket.name, 0, bucket.events, state, producers, _state_version(bucket)
            )
            if not durable:
                # Every record queued before is applied: the snapshot holds them all.
                await self.db.set_bucket_persistence(bucket.name, level, snapshot)
                bucket.journal = None
                return snapshot
            # Sends that arrive while the snapshot is written are queued behind this action as
            # durable records; if the write fails they are applied as ordinary sends.
            bucket.journal = BucketJournal()
            try:
                await self.db.set_bucket_persistence(bucket.name, "durable", snapshot)
            except BaseException:
                bucket.journal = None
                raise
            log.info("bucket %r is now durable (snapshot of %d bytes)", bucket.name, len(state))
            return snapshot

        return await self.in_order(change)

    async def delete(self, bucket: Bucket) -> None:
        """Delete the bucket's definition and durable state, in order with its records."""

        async def delete() -> None:
            await self.db.delete_bucket(bucket.name)
            bucket.journal = None

        await self.in_order(delete)

    # -- snapshots ------------------------------------------------------------------------------

    def _queue_snapshot(self, bucket: Bucket) -> asyncio.Future[None]:
        assert bucket.journal is not None
        bucket.journal.snapshot_queued = True
        future = self._schedule(partial(self._snapshot, bucket))
        future.add_done_callback(_log_unexpected)
        return future

    async def _snapshot(self, bucket: Bucket) -> None:
        journal = bucket.journal
        if journal is None or self.buckets.get(bucket.name) is not bucket or bucket.broken:
            return
        journal.snapshot_queued = False
        if not journal.records_since_snapshot and not journal.in_doubt:
            return
        if any(runner.running for runner in bucket.jobs.values()):
            # A running job may hold data it took from the state (the take / write / put-back
            # pattern): a snapshot now would not have it, and if the job then never puts it
            # back (a crash, a shutdown that gives up on it), it would be gone. The next
            # commit or maintenance tick asks again.
            return
        journal.snapshot_at = time.monotonic()
        try:
            state, producers = encode_snapshot(bucket)
        except HandlerError as exc:
            if journal.snapshot_error is None:
                log.error("bucket %r: cannot snapshot, the log keeps growing: %s",
                          bucket.name, exc.message)
            journal.snapshot_error = exc.message
            return
        row = tables.snapshot_row(
            bucket.name, journal.seq, bucket.events, state, producers, _state_version(bucket)
        )
        started = time.perf_counter()
        try:
            await self.db.write(partial(self._write_snapshot, row))
        except StorageError as exc:
            if journal.snapshot_error is None:
                log.error("bucket %r: could not write its snapshot: %s", bucket.name, exc.message)
            journal.snapshot_error = exc.message
            return
        self.fault("snapshot.after_commit")
        # Actions run alone, so no record was committed since the snapshot was taken.
        log.debug(
            "bucket %r: snapshot at record %d (%d bytes) replaced %d log records in %.3fs",
            bucket.name,
            journal.seq,
            len(state),
            journal.records_since_snapshot,
            time.perf_counter() - started,
        )
        journal.snapshot_seq = journal.seq
        journal.records_since_snapshot = 0
        journal.events_since_snapshot = 0
        journal.log_bytes = 0
        journal.snapshot_error = None
        journal.in_doubt = False
        journal.snapshots += 1

    def _write_snapshot(self, row: tuple[Any, ...], conn: sqlite3.Connection) -> None:
        tables.write_snapshot(conn, row)
        self.fault("snapshot.after_write")
        name, seq = row[0], row[1]
        tables.drop_records_through(conn, name, seq)
        # Rows past the snapshot can only be left by a failed commit (see BucketJournal.in_doubt):
        # actions run alone, so every commit before this one is done.
        tables.drop_records_after(conn, name, seq)
        tables.note_head(conn, name, seq)
        self.fault("snapshot.after_compact")

    async def _forget_doubt(self, bucket: Bucket) -> None:
        """Delete what a failed commit may have left past the bucket's last record."""
        journal = bucket.journal
        if journal is None or self.buckets.get(bucket.name) is not bucket:
            return
        journal.doubt_queued = False
        if not journal.in_doubt:
            return
        try:
            await self.db.write(partial(tables.truncate, bucket=bucket.name, seq=journal.seq))
        except StorageError:
            return  # still in doubt: the next tick tries again
        journal.in_doubt = False

    async def _maintain(self) -> None:
        """Time-based snapshots, cleaning up after failed commits, forgetting silent producers."""
        tick = max(0.05, min(1.0, self.snapshot_seconds / 2, self.producer_retention / 2))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for bucket in list(self.buckets.values()):
                if now - bucket.producers_rotated_at >= self.producer_retention:
                    bucket.rotate_producers(now)
                journal = bucket.journal
                if journal is None:
                    continue
                if journal.in_doubt and not journal.doubt_queued:
                    journal.doubt_queued = True
                    self._schedule(partial(self._forget_doubt, bucket)).add_done_callback(
                        _log_unexpected
                    )
                if (
                    journal.records_since_snapshot
                    and not journal.snapshot_queued
                    and now - journal.snapshot_at >= self.snapshot_seconds
                ):
                    self._queue_snapshot(bucket)

async def _nothing() -> None:
    return None


def _log_unexpected(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("durable log: maintenance action failed", exc_info=future.exception())


def _state_version(bucket: Bucket) -> int:
    return bucket.info.state_version if bucket.info is not None else 1
