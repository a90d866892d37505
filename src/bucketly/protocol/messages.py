"""The messages of the bucketly v1 protocol, and their MessagePack encoding.

Each wire message is one small frozen dataclass. A frame body is one MessagePack map:

- ``Greeting``: the server's first frame, ``{"bucketly": 1, "server": ..., "auth": [...]}``.
- ``Request``: ``{"id": <uint>, "op": <str>, ...arguments}`` (client to server).
- ``Reply``: ``{"id": <uint>, "ok": true, "result": <any>}``.
- ``ErrorReply``: ``{"id": <uint|nil>, "ok": false, "error": {"code", "message", "detail"?}}``.

docs/protocol.md is the full specification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ormsgpack

from ..errors import BadFrame, BadRequest, BucketlyError, ProtocolError, error_class_for_code
from .framing import encode_frame

__all__ = [
    "PROTOCOL_VERSION",
    "ErrorReply",
    "Greeting",
    "Reply",
    "Request",
    "decode_server_message",
    "encode_message",
    "pack",
    "register_encoder",
    "request_from_wire",
    "unpack",
]

#: The protocol version this package speaks; the server announces it in its greeting.
PROTOCOL_VERSION = 1

_UNPACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS
_PACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS


#: How values of other types are sent, by type: ``register_encoder`` adds to it.
_ENCODERS: dict[type, Callable[[Any], Any]] = {}


def register_encoder(types: type | tuple[type, ...], encode: Callable[[Any], Any]) -> None:
    """Send values of ``types`` (and their subclasses) as ``encode(value)``, which MessagePack
    can carry.

    For data types of the layers above the codec (``bucketly.UniqueIndex`` registers itself), so
    that the codec does not import them.
    """
    for kind in types if isinstance(types, tuple) else (types,):
        _ENCODERS[kind] = encode


def _default(value: Any) -> Any:
    # Sets are the most common aggregate; send them as arrays rather than refuse them.
    if isinstance(value, (set, frozenset)):
        return list(value)
    encode = _ENCODERS.get(type(value))
    if encode is not None:
        return encode(value)
    for kind, encode in _ENCODERS.items():  # a subclass of a registered type
        if isinstance(value, kind):
            return encode(value)
    raise TypeError(f"{type(value).__name__} is not MessagePack serializable")


def pack(value: Any) -> bytes:
    """Encode one value as MessagePack (sets become arrays). Raises ``TypeError``."""
    return ormsgpack.packb(value, default=_default, option=_PACK_OPTIONS)


def unpack(body: bytes) -> Any:
    """Decode one MessagePack value, raising ``BadFrame`` if it is not valid."""
    try:
        return ormsgpack.unpackb(body, option=_UNPACK_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise BadFrame(f"frame body is not valid MessagePack: {exc}") from None


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's first frame on every connection."""

    protocol: int
    server: str
    auth: tuple[str, ...] = ("password", "token")

    def to_wire(self) -> dict[str, Any]:
        return {"bucketly": self.protocol, "server": self.server, "auth": list(self.auth)}


@dataclass(frozen=True, slots=True)
class Request:
    """One request: an op, its arguments, and the id its reply will carry."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    #: The frame body it was decoded from (server side), kept so that a durable bucket can log
    #: a send as received instead of encoding its events again.
    body: bytes | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "op": self.op, **self.args}


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful reply to the request with the same id."""

    id: int
    result: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "ok": True, "result": self.result}


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A failed request (or, with ``id`` ``None``, a frame that could not be read as one)."""

    id: int | None
    code: str
    message: str
    detail: Any = None

    @classmethod
    def from_exception(cls, request_id: int | None, exc: BucketlyError) -> ErrorReply:
        return cls(request_id, exc.code, exc.message or str(exc), exc.detail)

    def to_exception(self) -> BucketlyError:
        exc = error_class_for_code(self.code)(self.message, detail=self.detail)
        exc.code = self.code
        return exc

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"id": self.id, "ok": False, "error": error}


Message = Greeting | Request | Reply | ErrorReply


def encode_message(message: Message) -> bytes:
    """Return the complete frame (header and body) for ``message``."""
    return encode_frame(pack(message.to_wire()))


def _is_request_id(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**64


def request_from_wire(obj: Any, body: bytes | None = None) -> Request:
    """Validate a decoded frame body as a ``Request`` (``body``: the bytes it came from).

    Raises ``BadRequest``; when the body carried a usable id, ``exc.detail`` is
    ``{"id": <id>}`` so that the error can still be matched to the request.
    """
    if not isinstance(obj, dict):
        raise BadRequest(f"a request must be a map, not {_wire_type(obj)}")
    request_id: Any = obj.get("id")
    if not _is_request_id(request_id):
        raise BadRequest('a request needs an "id": an unsigned integer below 2**64')
    op = obj.get("op")
    if type(op) is not str:
        raise BadRequest('a request needs an "op": a string', detail={"id": request_id})
    args = {k: v for k, v in obj.items() if k != "id" and k != "op"}
    return Request(request_id, op, args, body)


def decode_server_message(obj: Any) -> Greeting | Reply | ErrorReply:
    """Read a decoded frame body sent by a server (client side)."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"server sent {_wire_type(obj)}, expected a map")
    if "bucketly" in obj:
        return Greeting(obj["bucketly"], obj.get("server", ""), tuple(obj.get("auth", ())))
    ok = obj.get("ok")
    if ok is True:
        return Reply(obj.get("id"), obj.get("result"))  # type: ignore[arg-type]
    if ok is False:
        error = obj.get("error")
        if not isinstance(error, dict):
            raise ProtocolError("server sent an error reply without an error map")
        return ErrorReply(
            obj.get("id"),
            str(error.get("code")),
            str(error.get("message", "")),
            error.get("detail"),
        )
    raise ProtocolError(f"server sent a map that is no known message: {sorted(map(str, obj))}")


def _wire_type(obj: Any) -> str:
    names = {
        type(None): "nil",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        bytes: "binary",
        list: "an array",
        dict: "a map",
    }
    return names.get(type(obj), type(obj).__name__)
