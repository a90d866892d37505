"""One ``ServerConnection`` per client socket: framing, authentication state, ordering.

Theory of operation. Bytes arrive in ``data_received`` and go into the sans-I/O
``ServerProtocol``. Requests are then handled one after another, synchronously, in the order
they arrived, and their replies are written in that same order with one ``writelines`` per read.
Most ops (send, view, dump, ping...) finish synchronously, so a batch of events costs one decode
and one handler call, with no task, queue or lock in between.

An op that must wait (a password hash, a database write) returns a coroutine. The connection
then becomes *busy*: the coroutine runs as a task, further frames stay in the decoder's buffer
untouched, and when the task finishes its reply is written and the buffered frames are handled.
So replies always come back in request order, and a request always sees the effect of every
request sent before it on the same connection (a view after a send sees the send).

Flow control: while busy with a large backlog, or while the transport's write buffer is over its
high-water mark (a client that does not read its replies), the connection stops reading from the
socket, so neither side can make the server buffer without bound.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthRequired,
    BadArgument,
    BucketlyError,
    ConnectionRefusedByServer,
    FrameTooLarge,
    InternalError,
    PermissionDenied,
    ShuttingDown,
    UnencodableResult,
    UnknownBucket,
    UnknownOp,
)
from ..protocol import OPS, ErrorReply, Op, ServerProtocol, encode_message, validate_args
from ..protocol.messages import Request

if TYPE_CHECKING:
    from ..buckets import Bucket
    from ..store import UserRow
    from .server import Server

__all__ = ["ServerConnection"]

log = logging.getLogger("bucketly.server")

_SEND_KEYS = frozenset(("bucket", "events", "event", "ack"))


class ServerConnection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.protocol = ServerProtocol(max_frame_size=server.config.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.loopback = False
        self.user: UserRow | None = None
        self.closed = False
        #: The task of the async request in progress; later requests wait for it.
        self.busy: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._allowed: dict[tuple[str, str | None], bool] = {}
        self._grants_version = -1

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
            try:
                self.loopback = ipaddress.ip_address(peer[0]).is_loopback
            except ValueError:
                self.loopback = False
        server = self.server
        if len(server.connections) >= server.config.max_connections:
            log.warning(
                "refused connection from %s: already %d connections (--max-connections)",
                self.peer,
                len(server.connections),
            )
            exc = ConnectionRefusedByServer(
                f"the server has its maximum of {server.config.max_connections} connections; "
                "try again later"
            )
            transport.write(self.protocol.error(None, exc))
            self.closed = True
            transport.close()
            return
        server.connections.add(self)
        server.connections_total += 1
        transport.write(self.protocol.greeting(server.name))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        if self.busy is None:
            self._process()
        elif self.protocol.buffered > self.server.config.max_frame_size:
            self._pause_reading()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.busy is None:
            self._resume_reading()

    # -- request handling -------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete request in the buffer, in order, until one goes async."""
        if self.closed:
            return
        protocol = self.protocol
        out: list[bytes] = []
        try:
            while self.busy is None:
                request = protocol.next_request()
                if request is None:
                    break
                if type(request) is ErrorReply:
                    out.append(encode_message(request))
                    continue
                reply = self._handle(request)  # type: ignore[arg-type]
                if reply is not None:
                    out.append(reply)
        except FrameTooLarge as exc:
            log.warning("closing connection from %s: %s", self.peer, exc)
            out.append(protocol.error(None, exc))
            self._write(out)
            self.close()
            return
        self._write(out)

    def _write(self, out: list[bytes]) -> None:
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def _handle(self, request: Request) -> bytes | None:
        try:
            if self.server.shutting_down:
                raise ShuttingDown("the server is shutting down; reconnect to another or later")
            if request.op == "send":
                return self._send(request)
            op = OPS.get(request.op)
            if op is None:
                raise UnknownOp(f"unknown op {request.op[:100]!r}")
            if op.scope != "none" and self.user is None:
                raise AuthRequired(f"{op.name} needs an authenticated connection: send auth first")
            validate_args(op, request.args)
            self._authorize(op, request.args)
            from .dispatch import IMPLEMENTATIONS

            result = IMPLEMENTATIONS[op.name](self, request.args)
            if isinstance(result, Coroutine):
                self._start_async(request, result)
                return None
            return self._reply(request.id, result)
        except BucketlyError as exc:
            return self.protocol.error(request.id, exc)
        except Exception:
            log.exception("internal error handling %s from %s", request.op, self.peer)
            return self.protocol.error(request.id, InternalError("internal server error"))

    def _reply(self, request_id: int, result: Any) -> bytes:
        try:
            return self.protocol.reply(request_id, result)
        except TypeError as exc:
            raise UnencodableResult(f"the result cannot be sent as MessagePack: {exc}") from None

    def _send(self, request: Request) -> bytes | None:
        # The hot path: inlined checks, one handler call per batch.
        args = request.args
        if self.user is None:
            raise AuthRequired("send needs an authenticated connection: send auth first")
        if not args.keys() <= _SEND_KEYS:
            validate_args(OPS["send"], args)
        name = args.get("bucket")
        if type(name) is not str:
            raise BadArgument("send: argument 'bucket' must be a string")
        if (
            not self._allowed.get(("send", name))
            or self._grants_version != self.server.grants_version
        ):
            self._require("send", name)
        bucket = self.server.buckets.get(name)
        if bucket is None:
            raise UnknownBucket(f"no bucket named {name!r}")
        events = args.get("events")
        if events is None:
            if "events" in args:
                raise BadArgument("send: argument 'events' must be an array")
            if "event" not in args:
                raise BadArgument("send needs 'event' (one event) or 'events' (a batch)")
            events = [args["event"]]
        elif type(events) is not list:
            raise BadArgument("send: argument 'events' must be an array")
        elif "event" in args:
            raise BadArgument("send takes 'event' or 'events', not both")
        ack = args.get("ack", True)
        if type(ack) is not bool:
            raise BadArgument("send: argument 'ack' must be a boolean")
        bucket.check()
        bucket.apply(events)
        if ack:
            return self.protocol.reply(request.id, {"accepted": len(events)})
        return None

    def _start_async(self, request: Request, coro: Coroutine[Any, Any, Any]) -> None:
        self.busy = asyncio.get_running_loop().create_task(self._finish_async(request, coro))

    async def _finish_async(self, request: Request, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await coro
            reply = self._reply(request.id, result)
        except BucketlyError as exc:
            reply = self.protocol.error(request.id, exc)
        except Exception:
            log.exception("internal error handling %s from %s", request.op, self.peer)
            reply = self.protocol.error(request.id, InternalError("internal server error"))
        self._write([reply])
        self.busy = None
        if not self._writing_paused:
            self._resume_reading()
        self._process()

    # -- permissions ------------------------------------------------------------------------

    def _authorize(self, op: Op, args: dict[str, Any]) -> None:
        if op.permission is None:
            return
        bucket = args.get("bucket") if op.scope == "bucket" or "bucket" in args else None
        self._require(op.permission, bucket)

    def allowed(self, permission: str, bucket: str | None = None) -> bool:
        """Whether the user holds ``permission`` (on ``bucket``, when it is per-bucket)."""
        if self._grants_version != self.server.grants_version:
            self._allowed.clear()
            self._grants_version = self.server.grants_version
        key = (permission, bucket)
        cached = self._allowed.get(key)
        if cached is None:
            cached = self._allowed[key] = self.user is not None and any(
                (granted == "*" or granted == permission)
                and (bucket is None or fnmatch.fnmatchcase(bucket, pattern))
                for granted, pattern in self.user.grants
            )
        return cached

    def can_see(self, bucket: str) -> bool:
        """Whether the user holds any permission on ``bucket`` (for list_buckets)."""
        return self.user is not None and any(
            fnmatch.fnmatchcase(bucket, pattern) for _, pattern in self.user.grants
        )

    def _require(self, permission: str, bucket: str | None) -> None:
        if not self.allowed(permission, bucket):
            target = f" on bucket {bucket!r}" if bucket is not None else ""
            raise PermissionDenied(
                f"user {self.user.name if self.user else None!r} lacks permission "
                f"{permission!r}{target}"
            )

    def bucket(self, name: str) -> Bucket:
        bucket = self.server.buckets.get(name)
        if bucket is None:
            raise UnknownBucket(f"no bucket named {name!r}")
        bucket.check()
        return bucket

    # -- closing ----------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Close after the replies already written have been sent."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
