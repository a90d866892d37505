"""Sans-I/O connection state for both ends of a bucketly v1 connection.

Theory of operation: bytes from the network go into ``receive_data()``; complete messages come
out of ``next_request()`` (server) or ``next_event()`` (client); whatever the methods return as
``bytes`` must be written to the network, in the order returned. Neither class ever touches a
socket, so the server, the sync client, the asyncio client and the tests share this code.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadFrame, BadRequest, BucketlyError, LimitExceeded
from .framing import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameDecoder
from .limits import DEFAULT_MAX_FRAME_OBJECTS, object_bound
from .messages import (
    PROTOCOL_VERSION,
    ErrorReply,
    Greeting,
    Reply,
    Request,
    decode_server_message,
    encode_message,
    pack,
    request_from_wire,
    unpack,
)

__all__ = ["MAX_ERROR_MESSAGE", "ClientProtocol", "ServerProtocol"]

#: Longest error message the server sends, in characters. Messages quote what the client sent
#: (names, arguments); the cap keeps a hostile request from being echoed back at full size.
MAX_ERROR_MESSAGE = 2000


#: Default budgets of a connection that has not authenticated (``ServerProtocol``): the server's
#: options ``--pre-auth-bytes``, ``--pre-auth-frames`` and ``--auth-timeout`` default to them.
DEFAULT_PRE_AUTH_BYTES = 64 * 1024
DEFAULT_PRE_AUTH_FRAMES = 16
DEFAULT_AUTH_TIMEOUT = 10.0


class ServerProtocol:
    """The server's side: greets, reads requests, encodes replies, and holds the connection's
    authentication state with the budgets of a connection that has not authenticated.

    Before ``log_in()`` (and after ``log_out()``) a connection may send at most
    ``pre_auth_frames`` frames and ``pre_auth_bytes`` bytes of frames, no frame longer than the
    byte budget (or ``max_frame_size``, if smaller), and must log in within ``auth_timeout``
    seconds. The budgets count whole frames, headers included, so that what happens does not
    depend on how the stream was cut into reads: ``next_request()`` returns a frame only if it is
    within both, and raises ``LimitExceeded`` for the first beyond either, which is not decoded.
    Time is passed in (``now``, in the caller's monotonic clock), as h11 does: nothing here reads
    a clock.
    """

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_frame_objects: int = DEFAULT_MAX_FRAME_OBJECTS,
        pre_auth_bytes: int = DEFAULT_PRE_AUTH_BYTES,
        pre_auth_frames: int = DEFAULT_PRE_AUTH_FRAMES,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        now: float = 0.0,
    ) -> None:
        self._max_frame_size = max_frame_size
        self._decoder = FrameDecoder(min(max_frame_size, pre_auth_bytes))
        #: Values a frame may hold (``protocol.limits``); a frame of more is not decoded.
        self.max_frame_objects = max_frame_objects
        self.pre_auth_bytes = pre_auth_bytes
        self.pre_auth_frames = pre_auth_frames
        self.auth_timeout = auth_timeout
        #: Whether the connection is logged in (``log_in``): then no budget applies.
        self.authenticated = False
        #: When the connection began to wait for a login: opened, or logged out.
        self.unauthenticated_since = now
        #: Bytes received while not logged in, whole frames or not (``over_byte_budget``).
        self._received = 0
        #: Frames, and their bytes, read while not logged in.
        self._frames = 0
        self._frame_bytes = 0
        #: Raised again by every later ``next_request()``: the stream is not read past it.
        self._refused: LimitExceeded | None = None

    def greeting(self, server: str) -> bytes:
        """Bytes of the greeting frame: send them first, as soon as the connection opens."""
        return encode_message(Greeting(PROTOCOL_VERSION, server))

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        if not self.authenticated:
            self._received += len(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as requests."""
        return self._decoder.buffered

    @property
    def max_frame_size(self) -> int:
        """The largest frame accepted from now on (lower before authentication)."""
        return self._decoder.max_frame_size

    @property
    def max_buffered(self) -> int:
        """Bytes the server may buffer unread for this connection before it stops reading."""
        return self._max_frame_size if self.authenticated else self.pre_auth_bytes

    def log_in(self) -> None:
        """The connection has authenticated: lift the budgets; frames up to the maximum."""
        self.authenticated = True
        self._decoder.max_frame_size = self._max_frame_size

    def log_out(self, now: float) -> None:
        """Back to unauthenticated (a failed auth, or the user or token is gone).

        The budgets go on from what was counted before: they are not renewed by a login.
        """
        self.authenticated = False
        self.unauthenticated_since = now
        self._decoder.max_frame_size = min(self._max_frame_size, self.pre_auth_bytes)

    @property
    def over_byte_budget(self) -> bool:
        """Not logged in, and sent more than ``pre_auth_bytes`` (counting unfinished frames)."""
        return not self.authenticated and self._received > self.pre_auth_bytes

    def auth_expired(self, now: float) -> bool:
        """Not logged in ``auth_timeout`` seconds after the connection began to wait for it."""
        return not self.authenticated and now - self.unauthenticated_since > self.auth_timeout

    def _count(self, body: bytes) -> None:
        """Count a frame read before authentication; refuse the first beyond a budget."""
        self._frames += 1
        self._frame_bytes += HEADER_SIZE + len(body)
        if self._frames > self.pre_auth_frames:
            limit, what = "pre_auth_frames", f"more than {self.pre_auth_frames} frames"
        elif self._frame_bytes > self.pre_auth_bytes:
            limit, what = "pre_auth_bytes", f"more than {self.pre_auth_bytes} bytes sent"
        else:
            return
        self._refused = LimitExceeded(f"{what} before authentication", detail={"limit": limit})
        raise self._refused

    def next_request(self) -> Request | ErrorReply | None:
        """Return the next request, an ``ErrorReply`` to send for an unreadable one, or ``None``.

        A frame whose body is not a valid request does not end the connection: frames are
        length-delimited, so the next one is still found. ``FrameTooLarge`` is raised, and then
        the connection must be closed; so is ``LimitExceeded``, for a frame beyond a budget of
        a connection that has not authenticated, or of more than ``max_frame_objects`` values:
        it is not decoded (its id is not known), and every later call raises it again.
        """
        if self._refused is not None:
            raise self._refused
        body = self._decoder.next_frame()
        if body is None:
            return None
        if not self.authenticated:
            self._count(body)
        limit = self.max_frame_objects
        # Every value takes a byte at least: only a frame longer than the limit can break it.
        if len(body) > limit and object_bound(body, limit) > limit:
            self._refused = LimitExceeded(
                f"a frame of more than {limit} MessagePack values (maps, arrays, strings, "
                "numbers...); send smaller batches",
                detail={"limit": "max_frame_objects"},
            )
            raise self._refused
        try:
            return request_from_wire(unpack(body), body)
        except BadRequest as exc:
            request_id = exc.detail.get("id") if isinstance(exc.detail, dict) else None
            return ErrorReply(request_id, exc.code, exc.message)
        except BadFrame as exc:
            return ErrorReply(None, exc.code, exc.message)

    def reply(self, request_id: int, result: Any) -> bytes:
        """Bytes of a successful reply. Raises ``TypeError`` if ``result`` can't be encoded."""
        return encode_message(Reply(request_id, result))

    def error(self, request_id: int | None, exc: BucketlyError) -> bytes:
        """Bytes of an error reply for ``exc`` (its message cut to ``MAX_ERROR_MESSAGE``)."""
        reply = ErrorReply.from_exception(request_id, exc)
        if len(reply.message) > MAX_ERROR_MESSAGE:
            reply = ErrorReply(
                reply.id, reply.code, reply.message[:MAX_ERROR_MESSAGE] + "...", reply.detail
            )
        return encode_message(reply)


class ClientProtocol:
    """The client's side: numbers requests, reads the greeting and replies."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._decoder = FrameDecoder(max_frame_size)
        self._next_id = 1
        self.greeting: Greeting | None = None

    def send_request(self, op: str, args: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """Return ``(id, bytes)`` for a new request; the reply will carry ``id``."""
        request_id = self._next_id
        self._next_id += 1
        return request_id, encode_message(Request(request_id, op, args or {}))

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> Greeting | Reply | ErrorReply | None:
        """Return the next message from the server, or ``None`` if more data is needed."""
        body = self._decoder.next_frame()
        if body is None:
            return None
        message = decode_server_message(unpack(body))
        if isinstance(message, Greeting):
            self.greeting = message
        return message


def encode_request(request_id: int, op: str, args: dict[str, Any]) -> bytes:
    """Encode a request whose id you chose yourself (used by tests and raw clients)."""
    from .framing import encode_frame

    return encode_frame(pack({"id": request_id, "op": op, **args}))
