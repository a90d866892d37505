"""Recovery: rebuild each durable bucket from its journal at start-up, or refuse to; restore
each snapshot-level bucket from its snapshot.

A durable bucket's state is its snapshot plus the journal records after it, applied in order
(``buckets.journal``). Recovery reads them back from the database file and checks that they are
whole: each record's and the snapshot's checksum, no gap in the record numbers, and a journal that
reaches the bucket's head (the newest record ever committed, kept by every commit). Anything less
would serve a wrong state, so it raises ``DataLossDetected`` (the daemon exits with status 7)
unless the operator asked to accept the loss; see docs/durability.md, "Damage and repair".
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from ..errors import BadFrame, DataLossDetected, HandlerError
from ..protocol.messages import unpack
from ..store import journal as tables
from .records import BucketJournal
from .snapshot_codec import unpack_state

if TYPE_CHECKING:
    from ..store import Database
    from .runtime import Bucket

__all__ = ["RECOVERY_CHUNK", "forget_deleted", "recover", "recover_snapshot_level"]

log = logging.getLogger("bucketly.durability")

#: Journal records read per round trip to the writer thread: bounds the memory that recovery
#: holds (records are up to a frame each) without a round trip per record.
RECOVERY_CHUNK = 256


async def forget_deleted(db: Database) -> None:
    """Delete the journal rows of buckets kept in memory only (left by an older bucketly)."""
    durable = {name for name, row in db.buckets.items() if row.persistence != "memory"}

    dropped = await db.write(lambda conn: tables.drop_orphans(conn, durable))
    if dropped:
        log.info("dropped the durable state of non-durable buckets: %s",
                 ", ".join(sorted(set(dropped))))

async def recover(db: Database, bucket: Bucket, *, accept_loss: bool = False) -> str | None:
    """Rebuild a durable bucket's state: its snapshot, then its log, in order, to its head.

    Raises ``DataLossDetected`` when the snapshot or the log is damaged, or records that
    were committed are missing (a gap, or a log that ends before the bucket's head), so that
    the state would be wrong: the message says which bucket and records. With
    ``accept_loss``, the bucket is rebuilt from what is whole instead (what follows the
    damage is deleted), and the return value says what was lost.
    """
    name = bucket.name
    started = time.perf_counter()
    journal = BucketJournal()
    head: int = await db.read(lambda conn: tables.read_head(conn, name))
    snapshot = await db.read(lambda conn: tables.read_snapshot(conn, name))
    if snapshot is not None:
        seq = snapshot[0]
        damage = _restore_snapshot(bucket, snapshot, "durable bucket")
        if damage is not None:
            damage += ", and the log it replaced is gone"
            if not accept_loss:
                raise _damaged(db, damage)
            await db.write(partial(tables.truncate, bucket=name, seq=0, snapshot=True))
            bucket.journal = BucketJournal()
            return f"{damage}: the bucket starts empty; records 1 to {head} are lost"
        if bucket.broken:
            return None
        journal = BucketJournal(seq)
    expected = journal.seq + 1
    # The first record the handler raised on, its error, and how many it raised on.
    failed: tuple[int, str] | None = None
    failures = 0
    problem: str | None = None
    while problem is None:
        rows = await db.read(
            partial(tables.read_records, bucket=name, first=expected, limit=RECOVERY_CHUNK)
        )
        if not rows:
            break
        for seq, producer, producer_seq, payload, crc in rows:
            if seq != expected:
                problem = (
                    f"the durable log of bucket {name!r} is missing records {expected} to "
                    f"{seq - 1}, so the records after the gap cannot be replayed in order"
                )
                break
            events = None
            if tables.record_checksum(name, seq, producer, producer_seq, payload) == crc:
                try:
                    events = unpack(payload)
                except BadFrame:
                    events = None
                if isinstance(events, dict):  # a send request as received: see append()
                    events = events.get("events")
            if not isinstance(events, list):
                problem = (
                    f"the durable log of bucket {name!r} is damaged: record {seq} fails its "
                    f"checksum, and no record from it on can be replayed"
                )
                break
            # Every logged record was applied when it was logged (resends never are).
            if producer is not None:
                bucket.accept(producer, producer_seq)
            try:
                bucket.apply(events)
            except HandlerError as exc:
                # As when it was first applied (its sender was told): counted in
                # bucket.errors, and reported below.
                failures += 1
                if failed is None:
                    failed = (seq, exc.message)
            journal.seq = seq
            journal.records_since_snapshot += 1
            journal.events_since_snapshot += len(events)
            journal.log_bytes += len(payload)
            expected += 1
    if problem is None and journal.seq < head:
        problem = (
            f"the durable log of bucket {name!r} ends at record {journal.seq}, but records "
            f"up to {head} were committed (and acknowledged): the last "
            f"{head - journal.seq} are missing"
        )
    loss = None
    if problem is not None:
        if not accept_loss:
            raise _damaged(db, problem)
        await db.write(partial(tables.truncate, bucket=name, seq=journal.seq))
        last = max(head, expected - 1)
        loss = (
            f"{problem}: the bucket is rebuilt from records up to {journal.seq}; records "
            f"{journal.seq + 1} to {last} are lost"
        )
    if failed is not None:
        log.warning(
            "durable bucket %r: its handler raised on %d of the records replayed, as it did "
            "when they were first applied (their senders were told); first: record %d: %s",
            name, failures, *failed,
        )
    bucket.journal = journal
    log.info(
        "recovered durable bucket %r: %s, then %d log records (%d events) in %.2fs",
        name,
        f"snapshot at record {journal.snapshot_seq}" if snapshot is not None
        else "no snapshot",
        journal.records_since_snapshot,
        journal.events_since_snapshot,
        time.perf_counter() - started,
    )
    return loss

async def recover_snapshot_level(
    db: Database, bucket: Bucket, *, accept_loss: bool = False
) -> tuple[str | None, float | None, int]:
    """Restore a snapshot-level bucket from its snapshot, if it has one.

    Returns ``(loss, taken_at, size)``: what ``accept_loss`` gave up (or None), the snapshot's
    Unix time (None: none, the bucket starts empty) and its state's size. Raises
    ``DataLossDetected`` for a damaged snapshot, as ``recover`` does.
    """
    name = bucket.name
    snapshot = await db.read(lambda conn: tables.read_snapshot(conn, name))
    if snapshot is None:
        return None, None, 0
    damage = _restore_snapshot(bucket, snapshot, "snapshot-level bucket")
    if damage is not None:
        if not accept_loss:
            raise _damaged(db, damage)
        await db.write(partial(tables.truncate, bucket=name, seq=0, snapshot=True))
        return f"{damage}: the bucket starts empty", None, 0
    taken_at = snapshot[6]
    if not bucket.broken:
        log.info("restored snapshot-level bucket %r from its snapshot of %s (%d events)",
                 name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(taken_at)),
                 bucket.events)
    return None, taken_at, len(snapshot[2])


def _restore_snapshot(bucket: Bucket, snapshot: tuple[Any, ...], kind: str) -> str | None:
    """Restore ``bucket`` from a ``read_snapshot`` row. Returns what is damaged (the row
    fails its checksum), or None; a handler that cannot take it leaves ``bucket.broken``."""
    name = bucket.name
    seq, events, state, producers, crc, version, _ = snapshot
    if tables.snapshot_checksum(name, seq, events, state, producers, version) != crc:
        return f"the snapshot of {kind} {name!r} is damaged (its checksum does not match)"
    assert bucket.info is not None
    current = bucket.info.state_version
    step = "restore"
    try:
        restored = unpack_state(state)
        if version != current:  # taken by another version of the class (a reload)
            step = "migrate"
            restored = bucket.handler.migrate(restored, version)
            step = "restore"
        bucket.handler.restore(restored)
    except BaseException as exc:
        bucket.broken = (
            f"{kind} {name!r}: {bucket.row.handler}.{step} failed on its snapshot "
            f"(state_version {version}): {exc!r}; its "
            f"{'log' if bucket.row.durable else 'snapshot'} is kept until the handler can read it"
        )
        return None
    bucket.events = events
    bucket.restore_producers(unpack(producers))
    return None


def _damaged(db: Database, problem: str) -> DataLossDetected:
    return DataLossDetected(
        f"{problem}. bucketlyd will not start rather than serve a wrong state from "
        f"{str(db.path)!r}. Restore the file (with its -wal) from a backup; or start "
        "with --quarantine-damaged to serve the other buckets and keep this one untouched "
        "and unavailable; or with --accept-data-loss to rebuild it from what is whole and "
        "delete the rest (durability.md, 'Damage and repair')"
    )
