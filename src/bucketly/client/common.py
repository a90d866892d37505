"""What the sync and asyncio clients share besides the commands and their core (core.py):
defaults and checks."""

from __future__ import annotations

import ssl
from typing import Any

from ..errors import BucketlyError, ProtocolError
from ..protocol import PROTOCOL_VERSION, ErrorReply, Greeting

__all__ = [
    "CLIENT_MAX_FRAME_SIZE",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_TIMEOUT",
    "RESEND_LIMIT",
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
