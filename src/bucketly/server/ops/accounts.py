"""The ops of accounts: logging in, users, passwords, grants, API tokens, the audit trail.

Who may call each op is declared in ``bucketly.protocol.OPS`` and checked before these run. Two
rules are enforced here on top, so that holding ``users.manage`` or ``grants.manage`` is not a
back door to everything:

- you can only grant or revoke what you hold yourself (``_check_holds``): a grant of
  ``send`` on ``clicks.*`` needs ``send`` (or ``*``) on ``*`` or ``clicks.*``;
- you can only delete, or set the password of, a user whose every grant you hold
  (``_check_outranks``): a user manager cannot take over ``admin``.

Every change is recorded in the audit trail with who made it and from where, and bumps
``server.grants_changed()`` when it can change what a live connection may do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any

from ...errors import (
    AuthFailed,
    BadArgument,
    PermissionDenied,
    TooManyAttempts,
    UnknownUser,
    UserExists,
)
from ...protocol import OPS
from ...protocol.ops import (
    DEFAULT_AUDIT_LIMIT,
    MAX_USER_NAME_LENGTH,
    check_grant,
    check_user_name,
    pattern_covers,
)
from ...store import UserRow, hash_password, verify_password
from ...store.tokens import (
    hash_token_secret,
    new_token_secret,
    parse_token,
    token_string,
    verify_token_secret,
)
from ..audit import AUDIT_MAX_READ
from ..throttle import pair_key, peer_key, user_key
from .registry import Session, op

__all__ = ["MAX_PASSWORD_LENGTH", "MAX_TOKENS_PER_USER"]

#: Longest password accepted, in characters: hashing cost grows with length, and no human
#: password needs more. A longer one is refused before any hashing.
MAX_PASSWORD_LENGTH = 1024
#: API tokens one user may hold: each is a row in the database file.
MAX_TOKENS_PER_USER = 100
#: Longest token name, in characters.
MAX_TOKEN_NAME_LENGTH = 100
#: Longest life of a token given an expiry, in seconds (a year and a day): beyond that, ask for
#: one that never expires, which says what it is.
MAX_TOKEN_LIFETIME = 366 * 24 * 3600
#: Most grants one token may be narrowed to.
MAX_TOKEN_GRANTS = 100

_WRONG = "unknown user or wrong password"


def _actor(conn: Session) -> str:
    assert conn.user is not None
    return conn.user.name


def _too_many(wait: float) -> TooManyAttempts:
    return TooManyAttempts(
        "too many failed logins for this user or from this address; try again in "
        f"{math.ceil(wait)} s",
        detail={"retry_after": round(wait, 1)},
    )


# -- logging in -----------------------------------------------------------------------------------


@op
async def op_auth(conn: Session, args: dict[str, Any]) -> Any:
    if "token" in args:
        if "user" in args or "password" in args:
            raise BadArgument("auth takes a token, or a user and a password; not both")
        return _token_login(conn, args["token"])
    if "user" not in args or "password" not in args:
        raise BadArgument("auth needs 'user' and 'password', or 'token'")
    return await _password_login(conn, args["user"], args["password"])


async def _password_login(conn: Session, name: str, password: str) -> Any:
    server = conn.server
    throttle = server.throttle
    host = conn.peer_host
    async with throttle.turn(peer_key(host)), throttle.turn(user_key(name)):
        wait = throttle.retry_after(*throttle.keys_for(name, host))
        if wait > 0:
            conn.log_out()
            server.audit.record("login_throttled", name, conn.peer_host, "refused unchecked")
            server.authentications["throttled"] += 1
            raise _too_many(wait)
        row = server.db.users.get(name)
        ok = False
        # Over-long input cannot be a user's: refuse it without hashing (cost grows with length).
        if len(password) <= MAX_PASSWORD_LENGTH and len(name) <= MAX_USER_NAME_LENGTH:
            ok = await asyncio.get_running_loop().run_in_executor(
                server.auth_executor, verify_password, row.password_hash if row else None, password
            )
        # (the user may have been deleted or changed while the hash ran)
        if ok and row is not None and server.db.users.get(name) is row:
            if not row.default_password or conn.loopback:
                throttle.succeeded(name, host)
                server.authentications["password_ok"] += 1
                conn.log_in(row)
                return {"user": row.name, "must_change_password": row.default_password}
            # Said in the log and the audit trail only: a distinct reply would confirm the
            # password to whoever tried it from afar.
            detail = "the initial password, from a non-loopback address"
        else:
            detail = _WRONG
        throttle.failed(pair_key(name, host), user_key(name), peer_key(host))
        conn.log_out()  # a failed login ends any earlier one on this connection
        server.audit.record("login_failed", name, conn.peer_host, detail)
        server.audit.warn(
            "login_failed", "failed login for user %r from %s: %s", name[:100], conn.peer, detail
        )
        server.authentications["password_failed"] += 1
        raise AuthFailed(_WRONG)


def _token_login(conn: Session, token: str) -> Any:
    # Not throttled: a token's secret has 128 random bits, so guessing one is hopeless, and
    # failures counted against the address would lock out the password logins behind it.
    server = conn.server
    parsed = parse_token(token)
    row = server.db.tokens.get(parsed[0]) if parsed else None
    ok = verify_token_secret(row.secret_hash if row else None, parsed[1] if parsed else "")
    user = server.db.users.get(row.user) if ok and row is not None else None
    if row is not None and user is not None and row.expired(time.time()):
        user = None  # answered as any invalid token: the reply confirms nothing
    if row is None or user is None:
        conn.log_out()
        what = f"token id {parsed[0]}" if parsed else "malformed token"
        server.audit.record(
            "token_failed", row.user if row else None, conn.peer_host, f"{what}: invalid or revoked"
        )
        server.audit.warn("token_failed", "failed token login from %s: %s", conn.peer, what)
        server.authentications["token_failed"] += 1
        raise AuthFailed("invalid or revoked token")
    server.authentications["token_ok"] += 1
    conn.log_in(user, row.id)
    return {"user": user.name, "must_change_password": user.default_password}


@op
def op_whoami(conn: Session, args: dict[str, Any]) -> Any:
    assert conn.user is not None
    token = conn.server.db.tokens.get(conn.token_id) if conn.token_id is not None else None
    return {
        "user": conn.user.name,
        "permissions": _grants(conn.user),
        "must_change_password": conn.user.default_password,
        "token": conn.token_id,
        # What the token narrows the connection to (None: all of the user's grants).
        "token_permissions": token.describe()["grants"] if token is not None else None,
    }


# -- passwords ------------------------------------------------------------------------------------


def _check_new_password(name: str, password: str) -> None:
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        raise BadArgument(f"a password must be 1 to {MAX_PASSWORD_LENGTH} characters")
    if password == name:
        raise BadArgument("a password must not be the user's name")


@op
async def op_change_password(conn: Session, args: dict[str, Any]) -> Any:
    user = conn.user
    assert user is not None
    server = conn.server
    old, new = args["old_password"], args["new_password"]
    _check_new_password(user.name, new)
    if new == old:
        raise BadArgument("the new password must differ from the old one")
    loop = asyncio.get_running_loop()
    executor = server.auth_executor
    # Guessing the old password here must cost as much as guessing it at login.
    key = user_key(user.name)
    async with server.throttle.turn(key):
        wait = server.throttle.retry_after(key)
        if wait > 0:
            raise _too_many(wait)
        if len(old) > MAX_PASSWORD_LENGTH or not await loop.run_in_executor(
            executor, verify_password, user.password_hash, old
        ):
            server.throttle.failed(key)
            server.audit.record(
                "login_failed", user.name, conn.peer_host, "change_password: wrong old password"
            )
            raise AuthFailed("the old password is wrong")
    new_hash = await loop.run_in_executor(executor, hash_password, new)
    revoked = await server.db.set_password(user.name, new_hash)
    server.audit.record("password_changed", user.name, conn.peer_host, f"user {user.name}")
    server.log.info("user %r changed their password", user.name)
    _credentials_changed(conn, user, revoked)
    return None


def _credentials_changed(conn: Session, user: UserRow, revoked: list[int]) -> None:
    """After ``user``'s password changed: their tokens are gone and their other connections
    end (at their next request); this connection, if it is the user's, proved the password and
    stays logged in, by password."""
    server = conn.server
    server.grants_changed()
    if conn.user is user:
        conn.keep_login()
    if revoked:
        ids = ", ".join(str(i) for i in revoked)
        server.audit.record(
            "token_revoked", _actor(conn), conn.peer_host,
            f"tokens {ids} of {user.name}: its password changed",
        )


@op
async def op_set_password(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name, password = args["user"], args["password"]
    row = _user(conn, name)
    _check_new_password(name, password)
    _check_outranks(conn, "set_password", row, "set the password of")
    new_hash = await asyncio.get_running_loop().run_in_executor(
        server.auth_executor, hash_password, password
    )
    if server.db.users.get(name) is not row:
        raise UnknownUser(f"no user named {name!r}")
    revoked = await server.db.set_password(name, new_hash)
    server.audit.record("password_set", _actor(conn), conn.peer_host, f"user {name}")
    server.log.info("user %r set the password of %r", _actor(conn), name)
    _credentials_changed(conn, row, revoked)
    return None


# -- users ----------------------------------------------------------------------------------------


def _user(conn: Session, name: str) -> UserRow:
    row = conn.server.db.users.get(name)
    if row is None:
        raise UnknownUser(f"no user named {name[:MAX_USER_NAME_LENGTH + 1]!r}")
    return row


def _grants(row: UserRow) -> list[dict[str, str]]:
    return [{"permission": p, "pattern": pattern} for p, pattern in sorted(row.grants)]


@op
async def op_create_user(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name, password = args["user"], args["password"]
    check_user_name(name)
    _check_new_password(name, password)
    if name in server.db.users:
        raise UserExists(f"user {name!r} exists already")
    password_hash = await asyncio.get_running_loop().run_in_executor(
        server.auth_executor, hash_password, password
    )
    await server.db.create_user(name, password_hash)
    server.audit.record("user_created", _actor(conn), conn.peer_host, f"user {name}")
    server.log.info("user %r created user %r", _actor(conn), name)
    return None


@op
async def op_delete_user(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name = args["user"]
    row = _user(conn, name)
    _check_outranks(conn, "delete_user", row, "delete")
    await server.db.delete_user(name)
    server.grants_changed()  # its live connections lose their login
    server.audit.record("user_deleted", _actor(conn), conn.peer_host, f"user {name}")
    server.log.info("user %r deleted user %r", _actor(conn), name)
    return None


@op
def op_list_users(conn: Session, args: dict[str, Any]) -> Any:
    tokens: dict[str, int] = {}
    for token in conn.server.db.tokens.values():
        tokens[token.user] = tokens.get(token.user, 0) + 1
    return [
        {
            "user": row.name,
            "created_at": row.created_at,
            "must_change_password": row.default_password,
            "tokens": tokens.get(row.name, 0),
        }
        for _, row in sorted(conn.server.db.users.items())
    ]


# -- grants ---------------------------------------------------------------------------------------


def _holds(grants: Iterable[tuple[str, str]], permission: str, pattern: str) -> bool:
    return any(
        (held == "*" or held == permission) and pattern_covers(held_pattern, pattern)
        for held, held_pattern in grants
    )


def _deny(conn: Session, op: str, message: str) -> PermissionDenied:
    conn.server.audit.record("permission_denied", _actor(conn), conn.peer_host, f"{op}: {message}")
    return PermissionDenied(message)


def _check_holds(conn: Session, op: str, permission: str, pattern: str) -> None:
    assert conn.user is not None
    if not _holds(conn.user.grants, permission, pattern):
        raise _deny(
            conn, op,
            f"you can only {op} what you hold yourself, and you hold no {permission!r} "
            f"covering {pattern!r}",
        )


def _check_outranks(conn: Session, op: str, target: UserRow, action: str) -> None:
    assert conn.user is not None
    if target is conn.user:
        return
    for permission, pattern in sorted(target.grants):
        if not _holds(conn.user.grants, permission, pattern):
            raise _deny(
                conn, op,
                f"cannot {action} user {target.name!r}: they hold {permission!r} on "
                f"{pattern!r}, which you do not",
            )


def _grant_args(args: dict[str, Any]) -> tuple[str, str, str]:
    permission, pattern = args["permission"], args.get("pattern", "*")
    check_grant(permission, pattern)
    return args["user"], permission, pattern


@op
async def op_grant(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name, permission, pattern = _grant_args(args)
    _user(conn, name)
    _check_holds(conn, "grant", permission, pattern)
    await server.db.grant(name, permission, pattern)
    server.grants_changed()
    what = f"{permission} on {pattern} to {name}"
    server.audit.record("granted", _actor(conn), conn.peer_host, what)
    server.log.info("user %r granted %s", _actor(conn), what)
    return None


@op
async def op_revoke(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name, permission, pattern = _grant_args(args)
    row = _user(conn, name)
    if (permission, pattern) not in row.grants:
        held = ", ".join(f"{p} on {pat}" for p, pat in sorted(row.grants)) or "none"
        raise BadArgument(
            f"user {name!r} holds no grant of {permission!r} on {pattern!r} (revoke takes the "
            f"exact permission and pattern of a grant); their grants: {held}"
        )
    _check_holds(conn, "revoke", permission, pattern)
    await server.db.revoke(name, permission, pattern)
    server.grants_changed()
    what = f"{permission} on {pattern} from {name}"
    server.audit.record("revoked", _actor(conn), conn.peer_host, what)
    server.log.info("user %r revoked %s", _actor(conn), what)
    return None


@op
def op_permissions(conn: Session, args: dict[str, Any]) -> Any:
    return _grants(_user(conn, args["user"]))


# -- API tokens -----------------------------------------------------------------------------------


@op
async def op_create_token(conn: Session, args: dict[str, Any]) -> Any:
    user = conn.user
    assert user is not None
    server = conn.server
    name = args.get("name")
    if name is not None and not 0 < len(name) <= MAX_TOKEN_NAME_LENGTH:
        raise BadArgument(f"a token name must be 1 to {MAX_TOKEN_NAME_LENGTH} characters")
    if user.default_password:
        raise _deny(
            conn, "create_token",
            f"user {user.name!r} still has its initial password: change it first "
            "(change_password); no token is issued to an account anyone can log in to",
        )
    held = sum(1 for token in server.db.tokens.values() if token.user == user.name)
    if held >= MAX_TOKENS_PER_USER:
        raise BadArgument(
            f"user {user.name!r} has {held} tokens, the most allowed: revoke unused ones"
        )
    grants = _token_grants(conn, args.get("grants"))
    expires_at = _token_expiry(conn, args.get("expires_in"))
    secret = new_token_secret()
    row = await server.db.create_token(
        user.name, name, hash_token_secret(secret), grants, expires_at
    )
    narrowed = "" if grants is None else f", narrowed to {len(grants)} grants"
    expiring = "" if expires_at is None else f", expiring in {expires_at - time.time():.0f} s"
    server.audit.record(
        "token_created", user.name, conn.peer_host,
        f"token {row.id} ({name or 'no name'}{narrowed}{expiring})",
    )
    server.log.info("user %r created API token %d", user.name, row.id)
    return {"token": token_string(row.id, secret), **row.describe()}


def _token_grants(
    conn: Session, given: list[Any] | None
) -> frozenset[tuple[str, str]] | None:
    """The grants a new token is narrowed to: each held by its owner and by this connection.

    A connection logged in with a narrowed token makes tokens no wider than its own.
    """
    user = conn.user
    assert user is not None
    current = conn.token_grants
    if given is None:
        return current
    if len(given) > MAX_TOKEN_GRANTS:
        raise BadArgument(f"create_token: at most {MAX_TOKEN_GRANTS} grants a token")
    grants = set()
    for item in given:
        if (
            not isinstance(item, dict)
            or not item.keys() <= {"permission", "pattern"}
            or not isinstance(item.get("permission"), str)
            or not isinstance(item.get("pattern", "*"), str)
        ):
            raise BadArgument(
                'create_token: each of grants must be a map {"permission": str, "pattern": str}'
            )
        permission, pattern = item["permission"], item.get("pattern", "*")
        check_grant(permission, pattern)
        if not _holds(user.grants, permission, pattern) or (
            current is not None and not _holds(current, permission, pattern)
        ):
            raise _deny(
                conn, "create_token",
                f"a token can only be narrowed to what you hold, and you hold no "
                f"{permission!r} covering {pattern!r}"
                + (" on this connection's token" if current is not None else ""),
            )
        grants.add((permission, pattern))
    return frozenset(grants)


def _token_expiry(conn: Session, expires_in: int | None) -> float | None:
    """When a new token expires: as asked, and never after this connection's own token."""
    if expires_in is not None and not 0 < expires_in <= MAX_TOKEN_LIFETIME:
        raise BadArgument(
            f"create_token: expires_in must be 1 to {MAX_TOKEN_LIFETIME} seconds"
        )
    token = conn.server.db.tokens.get(conn.token_id) if conn.token_id is not None else None
    limits = [
        t for t in (
            time.time() + expires_in if expires_in is not None else None,
            token.expires_at if token is not None else None,
        ) if t is not None
    ]
    return min(limits) if limits else None


@op
def op_list_tokens(conn: Session, args: dict[str, Any]) -> Any:
    name = args.get("user", _actor(conn))
    _check_outranks(conn, "list_tokens", _user(conn, name), "list the tokens of")
    return [
        token.describe()
        for _, token in sorted(conn.server.db.tokens.items())
        if token.user == name
    ]


@op
async def op_revoke_token(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    token_id = args["token_id"]
    row = server.db.tokens.get(token_id)
    if row is not None and row.user != _actor(conn):
        others = OPS["revoke_token"].permission_for_others
        assert others is not None
        conn.require(others, None, "revoke_token")
        # The rule of set_password and delete_user: only the tokens of users whose every
        # grant the caller holds too (a user manager cannot disarm admin).
        _check_outranks(conn, "revoke_token", _user(conn, row.user), "revoke the tokens of")
    if row is None:
        raise BadArgument(f"no token with id {token_id}")
    await server.db.delete_token(token_id)
    server.grants_changed()  # connections it authenticated lose their login
    server.audit.record(
        "token_revoked", _actor(conn), conn.peer_host, f"token {token_id} of {row.user}"
    )
    server.log.info("user %r revoked API token %d of %r", _actor(conn), token_id, row.user)
    return None


# -- the audit trail ------------------------------------------------------------------------------


@op
async def op_audit(conn: Session, args: dict[str, Any]) -> Any:
    limit = args.get("limit", DEFAULT_AUDIT_LIMIT)
    if not 1 <= limit <= AUDIT_MAX_READ:
        raise BadArgument(f"limit must be 1 to {AUDIT_MAX_READ}")
    return await conn.server.audit.read(limit)
