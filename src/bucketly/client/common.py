"""What the sync and asyncio clients share besides the commands: defaults and checks."""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import BucketlyConnectionError, BucketlyError, ConnectionLost, ProtocolError
from ..protocol import PROTOCOL_VERSION, ErrorReply, Greeting

__all__ = [
    "CLIENT_MAX_FRAME_SIZE",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_TIMEOUT",
    "RESEND_LIMIT",
    "Batch",
    "Resends",
    "auth_args",
    "check_greeting",
    "client_ssl_context",
    "send_failure",
]

#: Events per ``send`` frame. 1,000 typical events make a ~50 KiB frame: large enough that the
#: per-frame costs (syscalls, reply, handler call) vanish, small enough to stay far below the
#: server's 16 MiB frame limit and to keep latency low.
DEFAULT_BATCH_SIZE = 1000
#: Longest time, in seconds, an event waits in the buffer before its batch is written anyway.
DEFAULT_LINGER = 0.05
#: Batches written but not yet acknowledged before ``send`` waits for acknowledgements: enough
#: to keep the connection busy, few enough to bound memory and what a broken link can cost.
DEFAULT_MAX_IN_FLIGHT = 32
#: Seconds to wait for the server to connect or to answer before the connection is given up.
DEFAULT_TIMEOUT = 30.0
#: The client trusts its server more than the server trusts clients: dumps can be large.
CLIENT_MAX_FRAME_SIZE = 1 << 30


#: Connections a batch may be in flight on when they break before it is given up (handed to the
#: user in ``ConnectionLost.unacknowledged``) instead of resent again: a batch that keeps
#: breaking connections may itself be the cause.
RESEND_LIMIT = 3


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
    """The client's producer id, its batch numbers, and the batches to resend on reconnect.

    Shared by ``Client`` and ``AsyncClient``. Every batch carries ``(producer, seq)``; when a
    connection breaks, the batches in flight on it are kept and written first on the next one,
    and the server acknowledges those it had applied already without applying them again. So a
    broken connection neither loses nor doubles events.
    """

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

    def closing_error(
        self, exc: BucketlyConnectionError, buffered: tuple[str | None, list[Any]]
    ) -> BucketlyConnectionError:
        """What ``close()`` raises when ``exc`` stopped its final flush: a ``ConnectionLost``
        listing everything not delivered, or ``exc`` itself if nothing was left."""
        left = self.abandon(buffered)
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


def client_ssl_context(tls: ssl.SSLContext | bool | None) -> ssl.SSLContext | None:
    """The context to connect with: ``True`` verifies the server against the system's CAs."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return ssl.create_default_context()
    if not isinstance(tls, ssl.SSLContext):
        raise TypeError(f"tls must be an ssl.SSLContext or a bool, not {type(tls).__name__}")
    return tls


def auth_args(
    user: str | None, password: str | None, token: str | None
) -> dict[str, Any] | None:
    """The arguments of the ``auth`` request to log in with, or ``None`` not to log in."""
    if token is not None:
        if user is not None or password is not None:
            raise ValueError("give a token, or a user and password, not both")
        return {"token": token}
    if user is not None:
        return {"user": user, "password": password or ""}
    return None


def check_greeting(greeting: Greeting) -> None:
    if greeting.protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the server speaks bucketly protocol {greeting.protocol}; this client speaks "
            f"{PROTOCOL_VERSION}"
        )


def send_failure(reply: ErrorReply, bucket: str, events: list[Any]) -> BucketlyError:
    """The exception for a refused batch, carrying the bucket and the events it refused."""
    exc = reply.to_exception()
    exc.bucket = bucket
    exc.events = events
    exc.message = f"send to bucket {bucket!r} failed: {exc.message}"
    exc.args = (exc.message,)
    return exc
