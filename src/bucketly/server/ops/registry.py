"""The op registry, and the two narrow things an op is handed: its session and the server state.

An op implementation is ``def op_NAME(session, args)``, registered with ``@op``; it returns the
result or, when it must wait (a password hash, the database), a coroutine. Arguments have been
checked against ``bucketly.protocol.OPS``, and the session holds the op's permission, before it
runs. It sees the connection only through ``Session``, the members ops use, and the server only
through ``ServerState``, as uvicorn hands its protocols the shared server state: so no op
imports the connection or the server, and tests can hand an op a session of their own.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

from ...protocol import OPS

if TYPE_CHECKING:
    from ...buckets import Bucket
    from ...buckets.journal import Journal
    from ...buckets.snapshots import Snapshots
    from ...handlers import HandlerInfo, HandlersModule
    from ...store import Database, UserRow
    from ..audit import AuditLog
    from ..throttle import AuthThrottle

__all__ = ["IMPLEMENTATIONS", "Impl", "ServerState", "Session", "op"]


class ServerState(Protocol):
    """What ops use of the server (``server.Server`` is one); read-only to them, but for the
    methods."""

    @property
    def name(self) -> str: ...

    @property
    def log(self) -> logging.Logger: ...

    @property
    def db(self) -> Database: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def throttle(self) -> AuthThrottle: ...

    @property
    def auth_executor(self) -> Executor: ...

    @property
    def buckets(self) -> dict[str, Bucket]: ...

    #: Names of buckets whose creation is being written to the database.
    @property
    def creating(self) -> set[str]: ...

    @property
    def handlers(self) -> dict[str, HandlerInfo]: ...

    @property
    def durable(self) -> Journal: ...

    @property
    def snapshots(self) -> Snapshots: ...

    @property
    def handlers_module(self) -> HandlersModule | None: ...

    @property
    def reloads(self) -> int: ...

    def reload(self, *, force: bool = False, by: str | None = None,
               peer: str | None = None) -> dict[str, Any]: ...

    @property
    def grants_version(self) -> int:
        """Bumped by ``grants_changed``: a login that sees a new one checks itself again."""

    @property
    def authentications(self) -> collections.Counter[str]:
        """Logins by result (for the metrics)."""


    def grants_changed(self) -> None:
        """Users, grants or tokens changed: every connection re-checks its login and grants."""

    def add_bucket(self, bucket: Bucket) -> None: ...

    async def remove_bucket(self, name: str) -> None: ...

    def statistics(self) -> dict[str, Any]: ...


class Session(Protocol):
    """What ops use of the connection they run for (``connection.ServerConnection`` is one)."""

    @property
    def server(self) -> ServerState: ...

    @property
    def user(self) -> UserRow | None: ...

    @property
    def token_id(self) -> int | None: ...

    @property
    def token_grants(self) -> frozenset[tuple[str, str]] | None: ...

    @property
    def peer(self) -> str: ...

    @property
    def peer_host(self) -> str: ...

    @property
    def loopback(self) -> bool: ...


    def allowed(self, permission: str, bucket: str | None = None) -> bool: ...

    def can_see(self, bucket: str) -> bool: ...

    def require(self, permission: str, bucket: str | None, op: str) -> None: ...

    def bucket(self, name: str) -> Bucket: ...

    def log_in(self, user: UserRow, token_id: int | None = None) -> None: ...

    def log_out(self) -> None: ...

    def keep_login(self) -> None: ...


Impl = Callable[[Session, dict[str, Any]], Any]
#: Every op but ``send`` (whose hot path lives in connection.py), by name.
IMPLEMENTATIONS: dict[str, Impl] = {}


def op(func: Impl) -> Impl:
    """Register ``op_NAME`` as the implementation of op ``NAME`` (declared in ``OPS``)."""
    name = func.__name__.removeprefix("op_")
    assert name in OPS, f"{name} is not declared in bucketly.protocol.OPS"
    IMPLEMENTATIONS[name] = func
    return func
