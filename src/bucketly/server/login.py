"""``Login``: who one connection is logged in as, and what it may do.

A connection starts with no user. ``start`` makes it a user's (by password or by an API token,
whose grants then narrow the user's), ``end`` takes the user away again (a failed ``auth``, or
the user or token is gone). Grants, users and tokens can change under a live login: every change
bumps ``server.grants_version`` (the ops call ``server.grants_changed()``), and a login that sees
a new version drops its cached decisions and checks, in ``stale``, that its user (and token)
still exist and that the user's password has not changed since (``UserRow.epoch``). The
connection then ends the login itself, since that also changes its pre-authentication limits
(``connection.ServerConnection.log_out``).

Every decision is audited when it denies: ``require`` records a ``permission_denied`` entry
with the user, the address and what was asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import AuthRequired, BadArgument, PermissionDenied
from ..protocol.ops import MAX_BUCKET_NAME_LENGTH
from .permissions import Decisions, sees

if TYPE_CHECKING:
    from ..protocol import Op
    from ..store import UserRow
    from .ops.registry import ServerState

__all__ = ["Login", "name_too_long"]


def name_too_long(name: str) -> BadArgument:
    return BadArgument(
        f"bucket name of {len(name)} characters: bucket names have at most "
        f"{MAX_BUCKET_NAME_LENGTH}"
    )


class Login:
    """The login of one connection from ``peer_host``, on ``server``."""

    __slots__ = (
        "_server",
        "decisions",
        "epoch",
        "grants_version",
        "peer_host",
        "token_grants",
        "token_id",
        "user",
    )

    def __init__(self, server: ServerState, peer_host: str) -> None:
        self._server = server
        self.peer_host = peer_host
        self.user: UserRow | None = None
        #: The id of the API token logged in with, if it was one.
        self.token_id: int | None = None
        #: The grants that token is narrowed to (None: all of the user's): a request needs
        #: both the user's grant and the token's (``allowed``).
        self.token_grants: frozenset[tuple[str, str]] | None = None
        #: The user's ``epoch`` at login: a password change bumps it and ends this login.
        self.epoch = 0
        #: Cached decisions; the send hot path reads ``decisions.cache`` directly, after
        #: checking that ``grants_version`` is the server's.
        self.decisions = Decisions()
        self.grants_version = -1

    def start(self, user: UserRow, token_id: int | None = None) -> None:
        self.user = user
        self.token_id = token_id
        token = self._server.db.tokens.get(token_id) if token_id is not None else None
        self.token_grants = token.grants if token is not None else None
        self.epoch = user.epoch
        self.decisions.clear()
        self.grants_version = self._server.grants_version

    def end(self) -> None:
        self.user = None
        self.token_id = None
        self.token_grants = None
        self.decisions.clear()

    def keep(self) -> None:
        """The user changed their own password on this connection: stay logged in, as by
        password (a token it used was revoked with the others)."""
        assert self.user is not None
        self.token_id = None
        self.token_grants = None
        self.epoch = self.user.epoch
        self.decisions.clear()

    def stale(self) -> bool:
        """Catch up with a change of grants; True if this login is no longer valid (the
        connection must then end it)."""
        server = self._server
        self.decisions.clear()
        self.grants_version = server.grants_version
        user = self.user
        return user is not None and (
            server.db.users.get(user.name) is not user
            or user.epoch != self.epoch  # its password changed since this login
            or (self.token_id is not None and self.token_id not in server.db.tokens)
        )

    def allowed(self, permission: str, bucket: str | None = None) -> bool:
        """Whether the user holds ``permission`` (on ``bucket``, when it is per-bucket). The
        caller has caught up with ``grants_version`` first."""
        user = self.user
        if user is None:
            return False
        return self.decisions.allowed(user.grants, self.token_grants, permission, bucket)

    def can_see(self, bucket: str) -> bool:
        """Whether the user (and token) hold any per-bucket permission on ``bucket`` (for
        list_buckets)."""
        if self.user is None:
            return False
        token = self.token_grants
        return sees(self.user.grants, bucket) and (token is None or sees(token, bucket))

    def denied(self, permission: str, bucket: str | None, op: str) -> Exception:
        """The error for a request ``allowed`` refused (audited)."""
        user = self.user
        if user is None:
            return AuthRequired(
                f"{op} needs an authenticated connection: this connection's login ended (its "
                "user was deleted or its token revoked); send auth again"
            )
        target = f" on bucket {bucket[:MAX_BUCKET_NAME_LENGTH]!r}" if bucket is not None else ""
        self._server.audit.record(
            "permission_denied", user.name, self.peer_host, f"{op}: {permission}{target}"
        )
        return PermissionDenied(f"user {user.name!r} lacks permission {permission!r}{target}")

    def requirement(self, op: Op, args: dict[str, Any]) -> list[tuple[str, str | None]]:
        """The permissions (each with its bucket, or None) that request ``op`` with ``args``
        needs, in the order they are checked."""
        needed: list[tuple[str, str | None]] = []
        if op.permission_for_others is not None:
            other = args.get("user")
            if other is not None and self.user is not None and other != self.user.name:
                needed.append((op.permission_for_others, None))
        if op.permission is not None:
            bucket = None
            if op.scope == "bucket":
                bucket = args["bucket"]
                if len(bucket) > MAX_BUCKET_NAME_LENGTH:
                    raise name_too_long(bucket)
            needed.append((op.permission, bucket))
        return needed
