"""``ClientCore``: what ``Client`` and ``AsyncClient`` share, without any I/O.

Theory of operation. The core holds the batch being filled, the batches written and not yet
acknowledged (the in-flight table), the batches kept to resend after a broken connection, and the
failures of buffered sends not yet reported. It turns commands into bytes to write and bytes
read into settled replies; the shells (sync.py: a socket, a lock and a linger thread; aio.py:
streams, futures and a timer) only move bytes and wait. So the resend logic and the settlement of
batches are written once, and tested in memory (tests/test_client_core.py).

Every batch carries the client's producer id and a sequence number. When a connection breaks,
``connection_lost()`` keeps the batches in flight on it (``Resends.kept``), and
``connection_made()`` writes them first on the next connection: the server acknowledges those it
had applied already without applying them again, so a broken connection neither loses nor
doubles events. A batch is handed to the user (``ConnectionLost.unacknowledged``) only when it
was in flight on ``RESEND_LIMIT + 1`` broken connections, or when ``close()`` cannot deliver it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import BucketlyConnectionError, BucketlyError, ConnectionLost, ProtocolError
from ..protocol import ClientProtocol, ErrorReply, Greeting, Reply
from .common import CLIENT_MAX_FRAME_SIZE, RESEND_LIMIT, check_greeting, send_failure

__all__ = ["Batch", "ClientCore", "Resends"]


@dataclass(slots=True, eq=False)
class Batch:
    """Events written as one ``send`` frame, kept until the server acknowledges them."""

    bucket: str
    events: list[Any]
    #: Its sequence number from this client's producer id: the server applies it only once.
    seq: int
    #: Connections it was in flight on that broke before its acknowledgement.
    losses: int = 0


class Resends:
    """The client's producer id, its batch numbers, and the batches to resend on reconnect."""

    def __init__(self) -> None:
        #: Random per client object: the server keeps, per bucket, the last seq applied for it.
        self.producer = uuid.uuid4().hex
        self._last_seq = 0
        #: Batches to write before anything else on the next connection, in seq order.
        self.kept: list[Batch] = []

    def new_batch(self, bucket: str, events: list[Any]) -> Batch:
        self._last_seq += 1
        return Batch(bucket, events, self._last_seq)

    def args(self, batch: Batch) -> dict[str, Any]:
        return {
            "bucket": batch.bucket,
            "events": batch.events,
            "producer": self.producer,
            "seq": batch.seq,
        }

    def lost(self, in_flight: list[Batch], where: str, cause: BaseException | None
             ) -> ConnectionLost:
        """Keep ``in_flight`` for resending (up to ``RESEND_LIMIT``); the error to raise."""
        given_up = []
        for batch in in_flight:
            batch.losses += 1
            if batch.losses > RESEND_LIMIT:
                given_up.append(batch)
            else:
                self.kept.append(batch)
        self.kept.sort(key=lambda b: b.seq)
        reason = f": {cause}" if cause else ": the server closed the connection"
        message = f"lost the connection to {where}{reason}"
        kept = sum(len(b.events) for b in self.kept)
        if kept:
            message += f"; {kept} events not acknowledged yet will be resent on reconnecting"
        if given_up:
            message += (
                f"; {sum(len(b.events) for b in given_up)} events were in flight on "
                f"{RESEND_LIMIT + 1} broken connections and are given up: see unacknowledged"
            )
        return ConnectionLost(
            message, unacknowledged=[(b.bucket, b.events) for b in given_up]
        )

    def abandon(self, buffered: tuple[str | None, list[Any]]) -> list[tuple[str, list[Any]]]:
        """Give up everything kept, and the buffered events; return them (closing)."""
        left = [(b.bucket, b.events) for b in self.kept]
        self.kept = []
        bucket, events = buffered
        if events and bucket is not None:
            left.append((bucket, list(events)))
        return left


class ClientCore:
    """The state of one client object across its connections; see the module docstring."""

    def __init__(self, where: str) -> None:
        #: ``host:port``, for messages.
        self.where = where
        #: The connection's protocol state; None while not connected.
        self.protocol: ClientProtocol | None = None
        #: The batch being filled: its bucket, its events, when its first event came.
        self.batch_bucket: str | None = None
        self.batch: list[Any] = []
        self.batch_started = 0.0
        #: Request id -> the batch written with it, until its reply.
        self.in_flight: dict[int, Batch] = {}
        self.resends = Resends()
        #: Errors of buffered sends, raised by the next flush (``raise_failures``).
        self.failures: list[BucketlyError] = []

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self) -> None:
        self.protocol = ClientProtocol(max_frame_size=CLIENT_MAX_FRAME_SIZE)

    def greeting(self) -> Greeting | None:
        """The server's greeting once it has arrived (check it, raise what it says if it is an
        error), or None if more bytes are needed."""
        assert self.protocol is not None
        message = self.protocol.next_event()
        if message is None:
            return None
        if isinstance(message, ErrorReply):
            raise message.to_exception()
        if not isinstance(message, Greeting):
            raise ProtocolError("the server did not greet first")
        check_greeting(message)
        return message

    def next_resend(self) -> tuple[int, bytes] | None:
        """The request id and frame of the next batch kept from the last connection (now in
        flight), in order; None when all are written. Write these before anything else."""
        if not self.resends.kept:
            return None
        return self._frame(self.resends.kept.pop(0))

    def connection_lost(self, cause: BaseException | None) -> ConnectionLost:
        """The connection is gone: keep its in-flight batches to resend; the error to raise."""
        in_flight = list(self.in_flight.values())
        self.in_flight.clear()
        self.protocol = None
        return self.resends.lost(in_flight, self.where, cause)

    def closing_error(self, exc: BucketlyConnectionError) -> BucketlyConnectionError:
        """What ``close()`` raises when ``exc`` stopped its final flush: a ``ConnectionLost``
        listing everything not delivered, or ``exc`` itself if nothing was left."""
        left = self.resends.abandon((self.batch_bucket, self.batch))
        self.batch = []
        if isinstance(exc, ConnectionLost):
            left = exc.unacknowledged + left
        if not left:
            return exc
        lost = ConnectionLost(
            f"closed without delivering {sum(len(e) for _, e in left)} events: {exc}",
            unacknowledged=left,
        )
        lost.__cause__ = exc
        return lost

    # -- buffering --------------------------------------------------------------------------

    def start_batch(self, bucket: str, now: float) -> bool:
        """Make ``bucket``'s the batch to fill; True if another bucket's batch must be written
        first (then call ``take_batch`` and ``start_batch`` again)."""
        if self.batch and self.batch_bucket != bucket:
            return True
        if not self.batch:
            self.batch_started = now
        self.batch_bucket = bucket
        return False

    def due(self, now: float, linger: float) -> float:
        """Seconds until the batch must be written (0 or less: now)."""
        return self.batch_started + linger - now

    def take_batch(self, size: int | None = None) -> tuple[int, bytes]:
        """The request id and frame of the batch (its first ``size`` events), now in flight."""
        batch = self.batch
        if size is None or size >= len(batch):
            events, self.batch = batch, []
        else:
            events, self.batch = batch[:size], batch[size:]
        bucket = self.batch_bucket
        assert bucket is not None
        return self._frame(self.resends.new_batch(bucket, events))

    def _frame(self, batch: Batch) -> tuple[int, bytes]:
        assert self.protocol is not None
        request_id, data = self.protocol.send_request("send", self.resends.args(batch))
        self.in_flight[request_id] = batch
        return request_id, data

    # -- requests and replies ---------------------------------------------------------------

    def request(self, op: str, args: dict[str, Any]) -> tuple[int, bytes]:
        assert self.protocol is not None
        return self.protocol.send_request(op, args)

    def next_reply(self) -> Reply | ErrorReply | None:
        """The next reply read, or None if more bytes are needed. A reply to a batch settles it
        (an error joins ``failures``). An error sent with no id (the server is refusing the
        connection, or closing it for a limit) is raised."""
        assert self.protocol is not None
        message = self.protocol.next_event()
        if message is None:
            return None
        if isinstance(message, Greeting):
            raise ProtocolError("the server sent a second greeting")
        if message.id is None:
            raise message.to_exception()
        batch = self.in_flight.pop(message.id, None)
        if batch is not None and isinstance(message, ErrorReply):
            self.failures.append(send_failure(message, batch.bucket, batch.events))
        return message

    def raise_failures(self) -> None:
        """Raise the first failure of a buffered send since the last call, if any."""
        if self.failures:
            first, *rest = self.failures
            self.failures = []
            if rest:
                first.message += f" (and {len(rest)} more failed batches)"
                first.args = (first.message,)
            raise first
