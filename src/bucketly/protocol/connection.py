"""Sans-I/O connection state for both ends of a bucketly v1 connection.

Theory of operation: bytes from the network go into ``receive_data()``; complete messages come
out of ``next_request()`` (server) or ``next_event()`` (client); whatever the methods return as
``bytes`` must be written to the network, in the order returned. Neither class ever touches a
socket, so the server, the sync client, the asyncio client and the tests share this code.
"""

from __future__ import annotations

from typing import Any

from ..errors import BadFrame, BadRequest, BucketlyError, LimitExceeded
from .framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder
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


class ServerProtocol:
    """The server's side: greets, reads requests, encodes replies."""

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_frame_objects: int = DEFAULT_MAX_FRAME_OBJECTS,
    ) -> None:
        self._decoder = FrameDecoder(max_frame_size)
        #: Values a frame may hold (``protocol.limits``); a frame of more is not decoded.
        self.max_frame_objects = max_frame_objects
        #: Raised again by every later ``next_request()``: the stream is not read past it.
        self._refused: LimitExceeded | None = None

    def greeting(self, server: str) -> bytes:
        """Bytes of the greeting frame: send them first, as soon as the connection opens."""
        return encode_message(Greeting(PROTOCOL_VERSION, server))

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes of a started, unfinished frame."""
        return self._decoder.buffered

    @property
    def max_frame_size(self) -> int:
        """The largest frame accepted from now on (the server lowers it before authentication)."""
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._decoder.max_frame_size = value

    def next_request(self) -> Request | ErrorReply | None:
        """Return the next request, an ``ErrorReply`` to send for an unreadable one, or ``None``.

        A frame whose body is not a valid request does not end the connection: frames are
        length-delimited, so the next one is still found. ``FrameTooLarge`` is raised, and then
        the connection must be closed; so is ``LimitExceeded`` for a frame of more than
        ``max_frame_objects`` values, which is not decoded (its id is not known).
        """
        if self._refused is not None:
            raise self._refused
        body = self._decoder.next_frame()
        if body is None:
            return None
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
