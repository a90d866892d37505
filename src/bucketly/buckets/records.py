"""What the journal keeps for one durable bucket (``BucketJournal``) and for one send (``Record``).

See journal.py for how they are used: ``Bucket.journal`` is a ``BucketJournal`` while the bucket
is durable, None otherwise; a ``Record`` lives from the moment a durable send is queued until it
is settled (committed and applied, or refused).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runtime import Bucket

__all__ = ["BucketJournal", "Record"]


class BucketJournal:
    """Where one durable bucket's log and snapshot stand (``Bucket.journal``)."""

    __slots__ = (
        "doubt_queued",
        "events_since_snapshot",
        "in_doubt",
        "log_bytes",
        "pending",
        "queued",
        "records_since_snapshot",
        "seq",
        "snapshot_at",
        "snapshot_error",
        "snapshot_queued",
        "snapshot_seq",
        "snapshots",
        "waiting",
    )

    def __init__(self, seq: int = 0) -> None:
        #: The last record committed and applied (records are numbered 1, 2, ... per bucket).
        self.seq = seq
        #: The last record the snapshot covers (0: no snapshot, or a snapshot of the start).
        self.snapshot_seq = seq
        self.records_since_snapshot = 0
        self.events_since_snapshot = 0
        #: Payload bytes of those records: what the log takes in the file, near enough.
        self.log_bytes = 0
        self.snapshot_at = time.monotonic()
        self.snapshot_queued = False
        self.snapshot_error: str | None = None
        self.snapshots = 0
        #: Records queued or being written that carry a producer id, by (producer, seq): a
        #: resend of one of them waits for the same outcome instead of being logged twice.
        self.pending: dict[tuple[str, int], Record] = {}
        #: A commit failed: rows past ``seq`` may have reached the file all the same (an fsync
        #: can fail after the data was written). The next commit or snapshot deletes them
        #: first, or, for an idle bucket, the maintenance task does (``_forget_doubt``).
        self.in_doubt = False
        self.doubt_queued = False
        #: What the records queued or being written can take in memory (``Record.cost``), and
        #: the senders waiting for it to go under the cap (``Journal.room``).
        self.queued = 0
        self.waiting: list[asyncio.Future[None]] = []

    def describe(self) -> dict[str, Any]:
        return {
            "last_record": self.seq,
            "snapshot_record": self.snapshot_seq,
            "log_records": self.records_since_snapshot,
            "log_events": self.events_since_snapshot,
            "snapshots": self.snapshots,
            "snapshot_error": self.snapshot_error,
            "queued_bytes": self.queued,
        }


class Record:
    """One send to a durable bucket, from the moment it is queued until it is settled."""

    __slots__ = ("bucket", "cost", "events", "future", "journal", "payload", "producer",
                 "producer_seq", "seq")

    def __init__(self, bucket: Bucket, journal: BucketJournal, events: list[Any], payload: bytes,
                 producer: str | None, producer_seq: int | None,
                 future: asyncio.Future[dict[str, Any]], cost: int = 0) -> None:
        self.bucket = bucket
        #: Bytes the record can take in memory (``protocol.limits.decoded_cost``), counted in
        #: ``journal.queued`` until it is settled.
        self.cost = cost
        self.journal = journal
        self.events = events
        self.payload = payload
        self.producer = producer
        self.producer_seq = producer_seq
        self.future = future
        self.seq = 0
