"""The audit trail: failed logins, permission denials, dropped connections, user and grant changes.

Theory of operation. ``record()`` is a plain call on the event loop: it adds the entry to a small
in-memory batch, merging it with an identical one already there (same event, user, address and
detail: ``count`` goes up). Every ``AUDIT_FLUSH_INTERVAL`` seconds at most, the batch is written
to the ``audit`` table in one transaction through the database's single writer, and the table is
trimmed to its newest ``AUDIT_MAX_ROWS`` rows.

So a client hammering the server with denied requests costs one dictionary update per request
and one write per interval, never a write per request; and the batch is bounded
(``AUDIT_MAX_PENDING`` distinct entries, the overflow counted and recorded as one entry), so no
flood can grow memory. Entries never hold a password or a token: callers pass what was attempted,
by whom, from where.

The log gets the same treatment: ``warn()`` logs at most ``LOG_BURST`` warnings of one kind per
``LOG_WINDOW`` seconds and counts the rest, so a flood cannot fill the disk through the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from ..store import AuditEntry

if TYPE_CHECKING:
    from ..store import Database

__all__ = [
    "AUDIT_FLUSH_INTERVAL",
    "AUDIT_MAX_PENDING",
    "AUDIT_MAX_READ",
    "AUDIT_MAX_ROWS",
    "LOG_BURST",
    "LOG_WINDOW",
    "AuditLog",
]

log = logging.getLogger("bucketly.server")

#: Seconds between writes of the batch: a flood costs at most this many writes per second.
AUDIT_FLUSH_INTERVAL = 0.5
#: Distinct entries waiting for a write; more are counted, and recorded as one entry.
AUDIT_MAX_PENDING = 1000
#: Rows kept in the table (~200 bytes each): the oldest are deleted beyond this.
AUDIT_MAX_ROWS = 100_000
#: Most entries one ``audit`` request returns.
AUDIT_MAX_READ = 10_000

#: Warnings of one kind logged per window at most; the others are counted.
LOG_BURST = 20
LOG_WINDOW = 10.0

_FIELD_LIMIT = 200
_DETAIL_LIMIT = 500


class AuditLog:
    """Batches audit entries and writes them to the database file. One per server."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: dict[tuple[str, str | None, str | None, str], AuditEntry] = {}
        self._dropped = 0
        self._handle: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        #: Entries recorded since start (merged ones included).
        self.recorded = 0
        # kind -> [window start, warnings in the window, of which not logged]
        self._windows: dict[str, list[float]] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        """``log.warning(message, *args)``, unless ``kind`` already had its share lately."""
        now = time.monotonic()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= LOG_WINDOW:
            if window is not None and window[2]:
                log.warning(
                    "%d more %s warnings in %gs were not logged (the audit trail has them)",
                    window[2], kind, LOG_WINDOW,
                )
            window = self._windows[kind] = [now, 0, 0]
        window[1] += 1
        if window[1] <= LOG_BURST:
            log.warning(message, *args)
        else:
            window[2] += 1

    def record(self, event: str, user: str | None, peer: str | None, detail: str) -> None:
        """Note an event; it reaches the database file within ``AUDIT_FLUSH_INTERVAL``."""
        self.recorded += 1
        if user is not None:
            user = user[:_FIELD_LIMIT]
        if peer is not None:
            peer = peer[:_FIELD_LIMIT]
        detail = detail[:_DETAIL_LIMIT]
        key = (event, user, peer, detail)
        entry = self._pending.get(key)
        if entry is not None:
            entry.count += 1
        elif len(self._pending) < AUDIT_MAX_PENDING:
            self._pending[key] = AuditEntry(time.time(), event, user, peer, detail)
        else:
            self._dropped += 1
        if self._handle is None and self._writing is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (tests of the server's parts): flush() writes them
                return
            self._handle = loop.call_later(AUDIT_FLUSH_INTERVAL, self._start_flush)

    def _start_flush(self) -> None:
        self._handle = None
        self._writing = asyncio.get_running_loop().create_task(self._flush_once())
        self._writing.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._writing = None
        if self._pending or self._dropped:
            self._handle = asyncio.get_running_loop().call_later(
                AUDIT_FLUSH_INTERVAL, self._start_flush
            )

    async def _flush_once(self) -> None:
        entries = list(self._pending.values())
        self._pending = {}
        if self._dropped:
            entries.append(
                AuditEntry(
                    time.time(),
                    "audit_overflow",
                    None,
                    None,
                    f"{self._dropped} more entries in {AUDIT_FLUSH_INTERVAL}s were not recorded",
                    self._dropped,
                )
            )
            self._dropped = 0
        if not entries:
            return
        try:
            await self.db.append_audit(entries, AUDIT_MAX_ROWS)
        except StorageError as exc:
            log.error("could not write %d audit entries: %s", len(entries), exc)

    async def flush(self) -> None:
        """Write everything recorded so far (before reading the table, and at shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        while self._writing is not None:
            await asyncio.shield(self._writing)
        await self._flush_once()

    async def read(self, limit: int) -> list[dict[str, Any]]:
        await self.flush()
        return await self.db.read_audit(min(limit, AUDIT_MAX_READ))
