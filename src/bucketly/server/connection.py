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

Sends to durable buckets are pipelined. Such a send is queued on the durable log and the
connection becomes busy with a *pipeline* (``_drain_pipeline``): while the log writes, the
connection goes on reading, and further sends to durable buckets join the pipeline (up to
``pipeline.MAX_PIPELINED_SENDS``), so that they share the next commit. The first request of any
other kind is *held*: it waits, with everything after it, until every send before it is on disk
and applied. The replies of the pipeline are written in order as their commits complete.

Memory (docs/security.md, "Memory"): the sans-I/O layer refuses, unread, a frame of more than
``max_frame_objects`` values, and each durable send is charged what it can take decoded
(``protocol.limits.decoded_cost``): the pipeline takes no more sends once this connection's
charges reach ``max_connection_queue``, and a send to a durable bucket whose queue is full
(``--max-bucket-queue``) waits for room (``_wait_for_room``), both by not reading further.

Flow control and fairness (flow.py): the connection stops reading while it is busy with a large
backlog or while its peer does not read its replies, drops a peer whose unread replies pass
``--max-write-buffer`` (``_queue_or_drop``), and yields its turn to the other connections after
``WORK_PER_TURN`` units of work.

Authentication state and permission decisions live in ``Login`` (login.py): the connection
keeps the sans-I/O pre-authentication limits in step with it (``log_in``, ``log_out``).

Limits, each a ``ServerConfig`` option. Before authentication a connection may send at most
``pre_auth_bytes`` bytes and ``pre_auth_frames`` frames, and no frame larger than the byte budget
(checked from its header); it must authenticate within ``auth_timeout``. A frame, once started,
must be complete within ``frame_timeout``. Timeouts cost no timer per connection or per frame:
the connection notes when it began waiting, and the server's sweep calls ``check_timeouts``
about once a second. Breaking a limit gets a ``limit_exceeded`` error (``detail.limit`` names
it), an audit entry, and the connection closed.

Grants, users and tokens can change under a live connection: a connection that sees a new
``server.grants_version`` catches up (``_catch_up``) before it does anything else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthRequired,
    BucketlyError,
    ConnectionRefusedByServer,
    FrameTooLarge,
    InternalError,
    LimitExceeded,
    ShuttingDown,
    UnencodableResult,
    UnknownBucket,
    UnknownOp,
)
from ..protocol import OPS, ErrorReply, Op, ServerProtocol, encode_message, validate_args
from ..protocol.limits import decoded_cost, object_bound
from ..protocol.messages import Request
from ..protocol.ops import (
    MAX_BUCKET_NAME_LENGTH,
)
from .flow import FRAME_COST, WORK_PER_TURN, FlowControl
from .login import Login, name_too_long
from .ops import IMPLEMENTATIONS
from .pipeline import Pipeline
from .sending import send_batch, send_bucket
from .throttle import peer_key

if TYPE_CHECKING:
    from ..buckets import Bucket
    from ..store import UserRow
    from .server import Server

__all__ = ["ServerConnection"]

log = logging.getLogger("bucketly.server")

#: Seconds a closed connection may take to flush its last replies before it is cut: a peer that
#: does not read must not keep a closing connection, and its buffer, forever.
CLOSE_GRACE = 5.0


class ServerConnection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        config = server.config
        self.protocol = ServerProtocol(
            max_frame_size=config.max_frame_size,
            max_frame_objects=config.max_frame_objects,
            pre_auth_bytes=config.pre_auth_bytes,
            pre_auth_frames=config.pre_auth_frames,
            auth_timeout=config.auth_timeout,
            now=time.monotonic(),
        )
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        #: The client's IP address (no port): what throttling and the audit trail record.
        self.peer_host = "?"
        self.loopback = False
        #: Its user, token and cached permission decisions (``log_in``, ``allowed``).
        self.login = Login(server, self.peer_host)
        self.closed = False
        self._lost = False
        #: When the unfinished frame at the end of the buffer began to arrive (None: no such).
        self._frame_started: float | None = None
        #: The task of the async request in progress; later requests wait for it.
        self.busy: asyncio.Task[None] | None = None
        #: Durable sends waiting for their commit, in order, and the replies queued behind
        #: them (pipeline.py); None when there are none (``_pipeline_send``).
        self._pipeline: Pipeline | None = None
        #: A request read while pipelining that must wait for the pipeline (``_pipeline_more``).
        self._held: Request | ErrorReply | None = None
        #: ``_held`` is a send waiting for room in its durable bucket's queue (``_room``).
        self._waiting_for_room = False
        #: Reading paused or not, and the turns shared with other connections (flow.py).
        self.flow = FlowControl()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = self.flow.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_host = str(peer[0])
            try:
                address = ipaddress.ip_address(peer[0])
            except ValueError:
                pass
            else:
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped  # an IPv4 client of a dual-stack listener
                    self.peer_host = str(address)
                self.loopback = address.is_loopback
            self.login.peer_host = self.peer_host
        server = self.server
        if server.shutting_down:
            # Accepted just before the listener closed: it would miss the shutdown's finish().
            self._transmit(self.protocol.error(None, ShuttingDown(
                "the server is shutting down; reconnect to another or later"
            )))
            self.closed = True
            transport.close()
            return
        victims = server.admission.admit(self, peer_key(self.peer_host))
        if victims is None:
            server.audit.warn(
                "max_connections",
                "refused connection from %s: already %d connections (--max-connections), "
                "none of them waiting to log in",
                self.peer,
                len(server.connections),
            )
            server.closed_by_limit["max_connections"] += 1
            exc = ConnectionRefusedByServer(
                f"the server has its maximum of {server.config.max_connections} connections; "
                "try again later"
            )
            self._transmit(self.protocol.error(None, exc))
            self.closed = True
            transport.close()
            return
        for victim, limit in victims:
            victim.give_way(limit)
        server.connections.add(self)
        server.connections_total += 1
        self._transmit(self.protocol.greeting(server.name))

    @property
    def authenticating(self) -> bool:
        """Not logged in, with a login being checked (admission never evicts it then)."""
        return self.user is None and self.busy is not None

    def give_way(self, limit: str) -> None:
        """Close this connection, which has not logged in, to give its slot to a new one."""
        waited = time.monotonic() - self.protocol.unauthenticated_since
        self.limit_exceeded(
            limit,
            f"a new connection took the slot of this one, which had not logged in after "
            f"{waited:.1f} s",
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = True
        self._release()

    def _release(self) -> None:
        """Give the connection's slot back (once it is closed for good, or lingers no more)."""
        server = self.server
        server.admission.closed(self)
        server.connections.discard(self)
        server.connection_gone()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close (after the replies already written)

    def data_received(self, data: bytes) -> None:
        self.server.bytes_received += len(data)
        if self.closed:
            return  # read only so that closing does not reset the connection (``close``)
        protocol = self.protocol
        protocol.receive_data(data)
        if self.busy is None:
            self._process()
            # Checked after processing: requests pipelined right behind an auth are fine (the
            # connection is busy with the auth, and stops reading instead).
            if protocol.over_byte_budget and self.busy is None and not self.closed:
                self.limit_exceeded(
                    "pre_auth_bytes",
                    f"more than {protocol.pre_auth_bytes} bytes sent before authentication",
                )
            return
        if self._pipeline is not None:
            self._pipeline_more()
        if protocol.buffered > protocol.max_buffered:
            self.flow.pause_reading()

    def pause_writing(self) -> None:
        self.flow.pause_writing()

    def resume_writing(self) -> None:
        self.flow.resume_writing()
        if self.busy is None:
            self._resume_reading()

    # -- request handling -------------------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete request in the buffer, in order, until one goes async."""
        if self.closed:
            return
        protocol = self.protocol
        out: list[bytes] = []
        queued = self.flow.queued()
        handled = 0
        try:
            while self.busy is None:
                if handled >= WORK_PER_TURN:
                    self.flow.yield_turn(self._next_turn)
                    break
                request: Request | ErrorReply | None
                if self._held is not None:
                    request, self._held = self._held, None
                else:
                    request = protocol.next_request()
                if request is None:
                    break
                handled += FRAME_COST
                if type(request) is Request:
                    events = request.args.get("events")
                    if type(events) is list:
                        handled += len(events)
                    handled_reply = self._handle(request)
                    if handled_reply is None:
                        continue
                    reply = handled_reply
                else:
                    if isinstance(request, ErrorReply):  # the only other kind there is
                        self.server.rejected_frames[request.code] += 1
                    reply = encode_message(request)
                if queued > self.server.config.max_write_buffer:
                    self._drop_slow_reader(queued)
                    return
                out.append(reply)
                queued += len(reply)
        except FrameTooLarge as exc:
            self.server.rejected_frames["frame_too_large"] += 1
            self.server.audit.warn(
                "frame_too_large", "closing connection from %s: %s", self.peer, exc
            )
            out.append(protocol.error(None, exc))
            self._write(out)
            self.close()
            return
        except LimitExceeded as exc:  # a budget before authentication, or too many values
            self._write(out)
            self.limit_exceeded(exc.detail["limit"], exc.message)
            return
        self._write(out)
        if protocol.buffered:
            if handled or self._frame_started is None:
                self._frame_started = time.monotonic()
        else:
            self._frame_started = None

    def _next_turn(self) -> None:
        self.flow.yielded = False
        if self.closed or self.busy is not None:
            return  # the busy task resumes reading and processing when it is done
        self._process()
        if not self.flow.yielded and self.busy is None:
            self._resume_reading()

    def _write(self, out: list[bytes]) -> None:
        if out and not self.closed and self.transport is not None:
            self.server.bytes_sent += sum(map(len, out))
            self.transport.writelines(out)

    def _transmit(self, data: bytes) -> None:
        """Write ``data``, counted in ``bytes_sent`` (every write goes through here or
        ``_write``)."""
        assert self.transport is not None
        self.server.bytes_sent += len(data)
        self.transport.write(data)

    def _queue_or_drop(self, reply: bytes) -> None:
        """Write one reply, unless the client already lets too much pile up: then drop it."""
        transport = self.transport
        if transport is None or self.closed:
            return
        queued = self.flow.queued()
        if queued > self.server.config.max_write_buffer:
            self._drop_slow_reader(queued)
        else:
            self._transmit(reply)

    def _handle(self, request: Request) -> bytes | None:
        try:
            if self.server.shutting_down:
                raise ShuttingDown("the server is shutting down; reconnect to another or later")
            if request.op == "send":
                return self._send(request)
            if self.login.grants_version != self.server.grants_version:
                self._catch_up()
            op = OPS.get(request.op)
            if op is None:
                raise UnknownOp(f"unknown op {request.op[:100]!r}")
            if op.scope != "none" and self.user is None:
                raise AuthRequired(f"{op.name} needs an authenticated connection: send auth first")
            validate_args(op, request.args)
            self._authorize(op, request.args)
            result = IMPLEMENTATIONS[op.name](self, request.args)
            if isinstance(result, Coroutine):
                self._start_async(request, result)
                return None
            return self._reply(request.id, result)
        except BucketlyError as exc:
            if request.op == "send":
                self._count_refused(request, exc.code)
            return self.protocol.error(request.id, exc)
        except Exception:
            log.exception("internal error handling %s from %s", request.op, self.peer)
            if request.op == "send":
                self._count_refused(request, "internal_error")
            return self.protocol.error(request.id, InternalError("internal server error"))

    def _count_refused(self, request: Request, reason: str) -> None:
        events = request.args.get("events")
        self.server.refused_events[reason] += len(events) if type(events) is list else 1

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
        name = send_bucket(args)
        login = self.login
        if (
            not login.decisions.cache.get(("send", name))
            or login.grants_version != self.server.grants_version
        ):
            # The name is unchecked here: a long one is refused before it is matched against
            # patterns or becomes a key of the decision cache.
            if len(name) > MAX_BUCKET_NAME_LENGTH:
                raise name_too_long(name)
            self.require("send", name, "send")
        # Every argument is checked before the bucket's existence, as for any op (the order is
        # in docs/protocol.md): so a malformed send is bad_argument whether the bucket exists.
        events, ack, producer, seq = send_batch(args)
        bucket = self.server.buckets.get(name)
        if bucket is None:
            raise UnknownBucket(f"no bucket named {name!r}")
        bucket.check()
        # A resend of a batch applied already is acknowledged, not applied again. (A durable
        # bucket notes a batch as applied when its commit is done, not here.)
        journal = bucket.journal
        if seq is not None and producer is not None and not (
            bucket.accept(producer, seq) if journal is None else not bucket.seen(producer, seq)
        ):
            if ack:
                return self.protocol.reply(request.id, {"accepted": len(events), "duplicate": True})
            return None
        if journal is not None:
            # Durable: applied and acknowledged once on disk; see _pipeline_send.
            durable = self.server.durable
            if durable.full(bucket):
                self._wait_for_room(request, bucket)
                return None
            # A batch is logged as the frame it came in (a map whose "events" are the batch):
            # already encoded, so not encoded again.
            body = request.body
            assert body is not None  # a request read by the server keeps its frame
            payload = body if "events" in args else None
            cost = decoded_cost(body, object_bound(body, self.server.config.max_frame_objects))
            future = durable.append(bucket, events, producer, seq, payload, cost)
            self._pipeline_send(request.id, future, ack, cost)
            return None
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
        self._queue_or_drop(reply)
        self.busy = None
        self._resume_reading()
        self._process()

    # -- durable sends: the pipeline -------------------------------------------------------

    def _pipeline_send(
        self, request_id: int, future: asyncio.Future[Any], ack: bool, cost: int
    ) -> None:
        if self._pipeline is None:
            self._pipeline = Pipeline(self.peer)
            self.busy = asyncio.get_running_loop().create_task(self._drain_pipeline())
        self._pipeline.add_send(request_id, future, ack, cost)

    def _pipelines(self, request: Request | ErrorReply) -> bool:
        """Whether ``request`` may join the pipeline: a send to a durable bucket with room."""
        if type(request) is not Request or request.op != "send":
            return False
        name = request.args.get("bucket")
        bucket = self.server.buckets.get(name) if type(name) is str else None
        return (
            bucket is not None
            and bucket.journal is not None
            and not self.server.durable.full(bucket)
        )

    def _wait_for_room(self, request: Request, bucket: Bucket) -> None:
        """Hold ``request``, a send to durable ``bucket``, until the bucket's queue has room.

        Back-pressure, not an error: the connection is busy meanwhile, so it stops reading
        once its buffer is full, and the request is handled again, in its turn, afterwards.
        """
        self._held = request
        self._waiting_for_room = True
        self.busy = asyncio.get_running_loop().create_task(self._room(bucket))

    async def _room(self, bucket: Bucket) -> None:
        await self.server.durable.room(bucket)
        self._waiting_for_room = False
        self.busy = None
        self._resume_reading()
        self._process()

    def _pipeline_more(self) -> None:
        """Take the sends to durable buckets that follow in the buffer into the pipeline."""
        pipeline = self._pipeline
        assert pipeline is not None
        protocol = self.protocol
        limit = self.server.config.max_connection_queue
        while self._held is None and not pipeline.full(limit) and not self.closed:
            try:
                request = protocol.next_request()
            except (FrameTooLarge, LimitExceeded):
                return  # _process meets it again once the pipeline is done, and closes
            if request is None:
                return
            if not self._pipelines(request):
                self._held = request
                return
            reply = self._handle(request)  # type: ignore[arg-type]
            if reply is not None:  # an error, or a resend applied already: in its place
                pipeline.add_reply(reply)

    async def _drain_pipeline(self) -> None:
        try:
            await self._write_pipeline_replies()
        except Exception:
            log.exception("internal error in the durable sends of %s; closing it", self.peer)
            self.close()
        self._pipeline = None
        self.busy = None
        self._resume_reading()
        self._process()

    async def _write_pipeline_replies(self) -> None:
        """Write the pipeline's replies in order, as commits complete, until it is empty."""
        pipeline = self._pipeline
        assert pipeline is not None
        self._pipeline_more()  # what came in the same read as the first durable send
        protocol = self.protocol
        while pipeline:
            head = pipeline.head()
            if head is not None:
                try:
                    await asyncio.shield(head)  # shared with a resend that may wait too
                except Exception:
                    pass  # its error is the reply, in take_ready
            out = pipeline.take_ready(protocol)
            if out:
                self._queue_or_drop(b"".join(out))
            self._pipeline_more()
            if protocol.buffered <= protocol.max_buffered:
                self._resume_reading()

    def waits(self) -> Iterator[str]:
        """What each request read and not yet carried out waits for (for the metrics):
        ``commit`` (a durable send, its commit), ``bucket_queue`` (a send, room in its durable
        bucket's full queue), ``pipeline`` (a request, the durable sends before it), ``turn``
        (the requests still unread of a connection that yielded its turn to the others: counted
        once, as at least one)."""
        if self._pipeline is not None:
            for _ in range(self._pipeline.waiting()):
                yield "commit"
        if self._held is not None:
            yield "bucket_queue" if self._waiting_for_room else "pipeline"
        if self.flow.yielded:
            yield "turn"

    # -- login and permissions (login.py) ------------------------------------------------

    @property
    def user(self) -> UserRow | None:
        return self.login.user

    @property
    def token_id(self) -> int | None:
        return self.login.token_id

    @property
    def token_grants(self) -> frozenset[tuple[str, str]] | None:
        return self.login.token_grants

    def _catch_up(self) -> None:
        """Grants, users or tokens changed somewhere: drop cached decisions, and end the
        login if its user or token is gone or its password changed."""
        login = self.login
        if login.stale():
            assert login.user is not None
            log.info("connection from %s lost the login of %r", self.peer, login.user.name)
            self.log_out()

    def _authorize(self, op: Op, args: dict[str, Any]) -> None:
        for permission, bucket in self.login.requirement(op, args):
            self.require(permission, bucket, op.name)

    def allowed(self, permission: str, bucket: str | None = None) -> bool:
        """Whether the user holds ``permission`` (on ``bucket``, when it is per-bucket)."""
        if self.login.grants_version != self.server.grants_version:
            self._catch_up()
        return self.login.allowed(permission, bucket)

    def can_see(self, bucket: str) -> bool:
        return self.login.can_see(bucket)

    def require(self, permission: str, bucket: str | None, op: str) -> None:
        """Raise ``PermissionDenied`` (and audit it) unless the user holds ``permission``."""
        if not self.allowed(permission, bucket):
            raise self.login.denied(permission, bucket, op)

    def log_in(self, user: UserRow, token_id: int | None = None) -> None:
        """The connection is now ``user``'s: lift the pre-authentication limits."""
        self.login.start(user, token_id)
        self.protocol.log_in()
        self.server.admission.logged_in(self)

    def log_out(self) -> None:
        """Back to unauthenticated (a failed auth, or the user or token is gone)."""
        self.login.end()
        self.protocol.log_out(time.monotonic())
        if not self.closed:
            self.server.admission.waiting(self, peer_key(self.peer_host))

    def keep_login(self) -> None:
        """This connection changed its user's password: it stays logged in."""
        self.login.keep()

    def bucket(self, name: str) -> Bucket:
        bucket = self.server.buckets.get(name)
        if bucket is None:
            raise UnknownBucket(f"no bucket named {name!r}")
        bucket.check()
        return bucket

    # -- closing ----------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self.closed:
            self.flow.resume_reading()

    def check_timeouts(self, now: float) -> None:
        """Close the connection if it broke a timeout. The server's sweep calls it."""
        if self.closed:
            return
        config = self.server.config
        if self.protocol.auth_expired(now):
            self.limit_exceeded(
                "auth_timeout", f"not authenticated within {config.auth_timeout:g} seconds"
            )
        elif (
            self._frame_started is not None
            and self.busy is None
            and not self.flow.read_paused
            and now - self._frame_started > config.frame_timeout
        ):
            self.limit_exceeded(
                "frame_timeout",
                f"a frame was not complete within {config.frame_timeout:g} seconds",
            )

    def limit_exceeded(self, limit: str, message: str) -> None:
        """Tell the client which limit it broke, record it, and close."""
        server = self.server
        server.closed_by_limit[limit] += 1
        server.audit.warn(
            "limit_exceeded", "closing connection from %s: %s (--%s)",
            self.peer, message, limit.replace("_", "-"),
        )
        server.audit.record(
            "connection_closed", self.user.name if self.user else None, self.peer_host,
            f"{limit}: {message}",
        )
        exc = LimitExceeded(message, detail={"limit": limit})
        self._write([self.protocol.error(None, exc)])
        self.close()

    def _drop_slow_reader(self, queued: int) -> None:
        server = self.server
        server.closed_by_limit["max_write_buffer"] += 1
        limit = server.config.max_write_buffer
        server.audit.warn(
            "max_write_buffer",
            "dropping connection from %s: %d bytes of replies not read (--max-write-buffer %d)",
            self.peer, queued, limit,
        )
        server.audit.record(
            "connection_dropped", self.user.name if self.user else None, self.peer_host,
            f"max_write_buffer: {queued} bytes of replies not read",
        )
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after the replies already written have been sent (within ``CLOSE_GRACE``).

        A lingering close, as HTTP servers do it: the server ends its side (FIN after the last
        reply) and goes on reading, and discarding, until the client closes its side. Closing
        at once with unread bytes from the client would make the kernel reset the connection,
        and a reset can destroy replies still on their way, the error that says why included.
        """
        if self.closed:
            return
        self.closed = True
        transport = self.transport
        if transport is None or self._lost:
            return
        # Not for a connection that never logged in (it broke a pre-auth limit, or gave way to
        # a new one): lingering would let it hold its slot for CLOSE_GRACE more, so its slot
        # is given back at once. If it goes on sending, a reset may then cost it the error
        # reply: a price for it, not for the server.
        if transport.can_write_eof() and (self.user is not None or self.server.shutting_down):
            transport.write_eof()
            self.flow.read_paused = False
            transport.resume_reading()
        else:
            transport.close()  # TLS: close_notify, then the close
            if self.user is None:
                self._release()
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self._abort)

    def finish(self) -> None:
        """At shutdown: answer everything still buffered (``shutting_down``), then close."""
        while self.busy is None and not self.closed:
            self.flow.yielded = False  # no turns to share any more: answer the whole buffer
            self._process()
            if not self.flow.yielded:
                break
        self.close()

    def _abort(self) -> None:
        if not self._lost and self.transport is not None:
            self.transport.abort()

