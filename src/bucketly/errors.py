"""The one error tree of bucketly.

Every error the server can send has a stable wire ``code`` (a short snake_case string, see
docs/protocol.md) and every class below carries it, so the server raises a class and the wire code
follows, and the client turns a wire code back into the same class::

    BucketlyError                    base of everything bucketly raises
    ├── ProtocolError                the peer broke the protocol (bad frame, bad message)
    │   ├── FrameTooLarge            a frame's length header is over the limit
    │   ├── BadFrame                 a frame's body is not one valid MessagePack value
    │   └── LimitExceeded            the peer broke a connection limit (timeouts, pre-auth budget)
    ├── RequestError                 the server refused one request; the connection goes on
    │   ├── BadRequest               not a well-formed request (not a map, no id, no op)
    │   ├── UnknownOp                no such op
    │   ├── BadArgument              an argument is missing or has the wrong type or value
    │   ├── AuthRequired             the op needs authentication first
    │   ├── AuthFailed               unknown user or wrong password (the same error for both)
    │   │   └── TooManyAttempts      too many failed logins: wait ``detail["retry_after"]`` s
    │   ├── PermissionDenied         authenticated, but not allowed to do this
    │   ├── UnknownUser              no user with that name
    │   ├── UserExists               a user with that name exists already
    │   ├── UnknownBucket            no bucket with that name
    │   ├── BucketExists             a bucket with that name exists already
    │   ├── UnknownHandler           the handlers module defines no such handler
    │   ├── UnknownView              the handler defines no such view
    │   ├── NotMergeable             a partitioned bucket's view (or dump) declares no merge
    │   ├── HandlerError             the user's handler code raised an exception
    │   ├── UnencodableResult        a view or dump returned something MessagePack can't carry
    │   ├── StorageError             the database file could not be written; nothing was done
    │   ├── ReloadFailed             a reload of the handlers module changed nothing: see why
    │   └── ShuttingDown             the server is stopping and takes no new work
    ├── ConnectionRefusedByServer    the server refused the connection (too many clients)
    ├── InternalError                a bug in bucketly; the server logged it
    ├── BucketlyConnectionError      the client could not reach the server, or lost it
    │   └── ConnectionLost           lost while requests were in flight (see ``unacknowledged``)
    ├── HandlersError                the handlers module could not be loaded (server start-up)
    ├── ConfigError                  the server's settings are unusable (e.g. TLS files)
    ├── RoutingError                 the client's server list does not fit a bucket's partitions
    └── DataLossDetected             the database file lost what it had committed (start-up)

``ProtocolError`` and its children mean the peer misbehaved; ``RequestError`` means one request
was refused and the connection is fine; ``BucketlyConnectionError`` is about the network, and
``ConnectionLost`` tells exactly which events were not acknowledged, so nothing is lost silently.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthFailed",
    "AuthRequired",
    "BadArgument",
    "BadFrame",
    "BadRequest",
    "BucketExists",
    "BucketlyConnectionError",
    "BucketlyError",
    "ConfigError",
    "ConnectionLost",
    "ConnectionRefusedByServer",
    "DataLossDetected",
    "FrameTooLarge",
    "HandlerError",
    "HandlersError",
    "InternalError",
    "LimitExceeded",
    "NotMergeable",
    "PermissionDenied",
    "ProtocolError",
    "ReloadFailed",
    "RequestError",
    "RoutingError",
    "ShuttingDown",
    "StorageError",
    "TooManyAttempts",
    "UnencodableResult",
    "UnknownBucket",
    "UnknownHandler",
    "UnknownOp",
    "UnknownUser",
    "UnknownView",
    "UserExists",
    "error_class_for_code",
]


class BucketlyError(Exception):
    """Base class of every error bucketly raises."""

    #: The stable wire error code (docs/protocol.md, "Error codes").
    code: str = "error"
    #: Exit status of the ``bucketly`` command-line client for this error.
    exit_code: int = 1
    #: For a refused batch of buffered sends: the bucket and the events that were refused.
    bucket: str | None = None
    events: list[Any] | None = None

    def __init__(self, message: str = "", *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        #: Optional structured detail sent along with the error (a MessagePack value).
        self.detail = detail


class ProtocolError(BucketlyError):
    """The peer broke the bucketly v1 protocol."""

    code = "bad_frame"
    exit_code = 4


class FrameTooLarge(ProtocolError):
    """A frame's length header is over the receiver's maximum frame size."""

    code = "frame_too_large"


class BadFrame(ProtocolError):
    """A frame's body is not one valid MessagePack value."""

    code = "bad_frame"


class LimitExceeded(ProtocolError):
    """The peer broke a limit of the connection; the server closes it.

    ``detail["limit"]`` names the limit: ``pre_auth_bytes``, ``pre_auth_frames``,
    ``auth_timeout``, ``frame_timeout`` or ``max_frame_objects`` (each a bucketlyd option of
    the same name).
    """

    code = "limit_exceeded"


class RequestError(BucketlyError):
    """The server refused one request; the connection carries on."""

    code = "bad_request"
    exit_code = 2


class BadRequest(RequestError):
    """The message is not a well-formed request (not a map, no integer id, no op)."""

    code = "bad_request"


class UnknownOp(RequestError):
    """The request names an op the server does not know."""

    code = "unknown_op"


class BadArgument(RequestError):
    """An argument of the request is missing or has the wrong type or value."""

    code = "bad_argument"


class AuthRequired(RequestError):
    """The op needs an authenticated connection."""

    code = "auth_required"
    exit_code = 3


class AuthFailed(RequestError):
    """Unknown user or wrong password: deliberately the same error for both."""

    code = "auth_failed"
    exit_code = 3


class TooManyAttempts(AuthFailed):
    """Too many failed logins for this user or from this address: refused without checking.

    ``detail["retry_after"]`` is the number of seconds to wait. The right password works again
    once that time has passed.
    """

    code = "too_many_attempts"


class PermissionDenied(RequestError):
    """The user is authenticated but holds no permission for this."""

    code = "permission_denied"
    exit_code = 3


class UnknownUser(RequestError):
    """No user has that name."""

    code = "unknown_user"


class UserExists(RequestError):
    """A user with that name exists already."""

    code = "user_exists"


class UnknownBucket(RequestError):
    """No bucket has that name."""

    code = "unknown_bucket"


class BucketExists(RequestError):
    """A bucket with that name exists already."""

    code = "bucket_exists"


class UnknownHandler(RequestError):
    """The server's handlers module defines no handler of that name."""

    code = "unknown_handler"


class UnknownView(RequestError):
    """The bucket's handler defines no view of that name."""

    code = "unknown_view"


class NotMergeable(RequestError):
    """A partitioned bucket's view (or merged dump) was asked for, but its handler declares no
    merge for it (``@bucketly.view(merge=...)``, ``Handler.dump_merge``): answered by one
    partition, it would be silently wrong."""

    code = "not_mergeable"


class HandlerError(RequestError):
    """The user's handler code raised an exception; the message says which and where."""

    code = "handler_error"


class UnencodableResult(RequestError):
    """A view or dump returned a value that MessagePack cannot carry."""

    code = "unencodable_result"


class StorageError(RequestError):
    """The database file could not be written; the request had no effect."""

    code = "storage_error"
    exit_code = 5


class ReloadFailed(RequestError):
    """A reload of the handlers module failed, and changed nothing: every bucket keeps its old
    code and state. ``detail`` says where: ``file`` and ``line`` when known, and ``bucket``
    when one bucket's state could not be carried over."""

    code = "reload_failed"


class ShuttingDown(RequestError):
    """The server is shutting down and takes no new work."""

    code = "shutting_down"
    exit_code = 5


class ConnectionRefusedByServer(BucketlyError):
    """The server refused this connection, e.g. because it has its maximum of clients."""

    code = "too_many_connections"
    exit_code = 5


class InternalError(BucketlyError):
    """A bug in bucketly. The server logged the traceback; please report it."""

    code = "internal_error"
    exit_code = 70


class BucketlyConnectionError(BucketlyError):
    """The client could not connect to the server, or lost the connection."""

    code = "connection_error"
    exit_code = 6


class ConnectionLost(BucketlyConnectionError):
    """The connection broke while requests were in flight.

    ``unacknowledged`` lists ``(bucket, events)`` pairs that were sent but whose
    acknowledgement never arrived: they may or may not have been applied. The
    client never drops them silently; resend them or record them.
    """

    code = "connection_lost"

    def __init__(
        self, message: str = "", *, unacknowledged: list[tuple[str, list[Any]]] | None = None
    ) -> None:
        super().__init__(message)
        self.unacknowledged = unacknowledged or []


class HandlersError(BucketlyError):
    """The handlers module could not be loaded or is not valid."""

    code = "handlers_error"
    exit_code = 2


class ConfigError(BucketlyError):
    """The server's settings cannot be used (e.g. an unreadable TLS certificate)."""

    code = "config_error"
    exit_code = 2


class RoutingError(BucketlyError):
    """A client routing over several servers cannot route a bucket: its server list is not the
    one the bucket was partitioned over, or the bucket's key cannot be found in an event."""

    code = "routing_error"
    exit_code = 2


class DataLossDetected(BucketlyError):
    """The database file has lost data it had committed; the server refuses to start.

    Its -wal file was damaged or deleted, it was replaced by an older copy, or records of a
    durable bucket's log are missing. ``--accept-data-loss`` starts anyway, reporting what was
    lost; ``--quarantine-damaged`` serves every other bucket and keeps a damaged one untouched.
    """

    code = "data_loss"
    exit_code = 7


def _all_subclasses(cls: type[BucketlyError]) -> list[type[BucketlyError]]:
    result = []
    for sub in cls.__subclasses__():
        result.append(sub)
        result.extend(_all_subclasses(sub))
    return result


#: wire code -> the most specific class that carries it (used by the clients).
_CLASS_FOR_CODE: dict[str, type[BucketlyError]] = {}
for _cls in _all_subclasses(BucketlyError):
    if _cls in (ProtocolError, RequestError):
        continue
    _CLASS_FOR_CODE.setdefault(_cls.code, _cls)

#: Codes of errors that never cross the wire: the client's own, and the server's at start-up.
_LOCAL_CODES = frozenset(
    {
        "connection_error",
        "connection_lost",
        "handlers_error",
        "config_error",
        "data_loss",
        "routing_error",
    }
)
#: Codes the server may put on the wire, with the class that stands for each.
WIRE_CODES: dict[str, type[BucketlyError]] = {
    code: cls for code, cls in _CLASS_FOR_CODE.items() if code not in _LOCAL_CODES
}


def error_class_for_code(code: str) -> type[BucketlyError]:
    """Return the exception class for a wire error code (``BucketlyError`` if unknown)."""
    return _CLASS_FOR_CODE.get(code, BucketlyError)
