"""The implementation of every op but ``send`` (whose hot path lives in connection.py).

Each function takes the connection and the request's validated arguments, and returns the result
or, when it must wait for a password hash or the database, a coroutine. Arguments have already
been checked against ``bucketly.protocol.OPS`` and the caller holds the op's permission.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..buckets import Bucket
from ..errors import AuthFailed, BadArgument, BucketExists, HandlerError, UnknownHandler
from ..protocol import OPS, PROTOCOL_VERSION, check_bucket_name
from ..store import BucketRow, hash_password, verify_password

if TYPE_CHECKING:
    from .connection import ServerConnection

__all__ = ["IMPLEMENTATIONS", "MAX_PASSWORD_LENGTH"]

#: Longest password accepted, in characters: hashing cost grows with length, and no human
#: password needs more.
MAX_PASSWORD_LENGTH = 1024

Impl = Callable[["ServerConnection", dict[str, Any]], Any]
IMPLEMENTATIONS: dict[str, Impl] = {}


def _op(func: Impl) -> Impl:
    name = func.__name__.removeprefix("op_")
    assert name in OPS, f"{name} is not declared in bucketly.protocol.OPS"
    IMPLEMENTATIONS[name] = func
    return func


@_op
def op_hello(conn: ServerConnection, args: dict[str, Any]) -> Any:
    version = args.get("protocol", PROTOCOL_VERSION)
    if "client" in args:
        conn.server.log.debug("client %s says it is %r", conn.peer, args["client"][:100])
    if version != PROTOCOL_VERSION:
        raise BadArgument(f"this server speaks bucketly protocol {PROTOCOL_VERSION}, not {version}")
    return {
        "protocol": PROTOCOL_VERSION,
        "server": conn.server.name,
        "authenticated": conn.user is not None,
    }


@_op
def op_ping(conn: ServerConnection, args: dict[str, Any]) -> Any:
    return "pong"


@_op
async def op_auth(conn: ServerConnection, args: dict[str, Any]) -> Any:
    name, password = args["user"], args["password"]
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AuthFailed("unknown user or wrong password")
    row = conn.server.db.users.get(name)
    loop = asyncio.get_running_loop()
    ok = await loop.run_in_executor(
        conn.server.auth_executor, verify_password, row.password_hash if row else None, password
    )
    if not ok or row is None:
        conn.user = None  # a failed login ends any earlier one on this connection
        conn.server.log.warning("failed login for user %r from %s", name[:100], conn.peer)
        raise AuthFailed("unknown user or wrong password")
    if row.default_password and not conn.loopback:
        conn.user = None
        conn.server.log.warning(
            "refused login of %r with its default password from non-loopback %s", name, conn.peer
        )
        raise AuthFailed(
            f"user {name!r} still has its default password, which is only accepted from a "
            "loopback address; change it from the server's machine first"
        )
    conn.user = row
    return {"user": row.name, "must_change_password": row.default_password}


@_op
def op_whoami(conn: ServerConnection, args: dict[str, Any]) -> Any:
    assert conn.user is not None
    return {
        "user": conn.user.name,
        "permissions": [
            {"permission": permission, "pattern": pattern}
            for permission, pattern in sorted(conn.user.grants)
        ],
        "must_change_password": conn.user.default_password,
    }


@_op
async def op_change_password(conn: ServerConnection, args: dict[str, Any]) -> Any:
    user = conn.user
    assert user is not None
    old, new = args["old_password"], args["new_password"]
    if not new or len(new) > MAX_PASSWORD_LENGTH:
        raise BadArgument(f"the new password must be 1 to {MAX_PASSWORD_LENGTH} characters")
    if new == old:
        raise BadArgument("the new password must differ from the old one")
    loop = asyncio.get_running_loop()
    executor = conn.server.auth_executor
    if len(old) > MAX_PASSWORD_LENGTH or not await loop.run_in_executor(
        executor, verify_password, user.password_hash, old
    ):
        raise AuthFailed("the old password is wrong")
    new_hash = await loop.run_in_executor(executor, hash_password, new)
    await conn.server.db.set_password(user.name, new_hash)
    conn.server.log.info("user %r changed their password", user.name)
    return None


@_op
def op_view(conn: ServerConnection, args: dict[str, Any]) -> Any:
    bucket = conn.bucket(args["bucket"])
    view_args = args.get("args") or {}
    if not all(type(key) is str for key in view_args):
        raise BadArgument("view: the keys of 'args' must be strings")
    return bucket.view(args["view"], view_args)


@_op
def op_dump(conn: ServerConnection, args: dict[str, Any]) -> Any:
    return conn.bucket(args["bucket"]).dump()


@_op
async def op_create_bucket(conn: ServerConnection, args: dict[str, Any]) -> Any:
    server = conn.server
    name, handler_name = args["bucket"], args["handler"]
    config = args.get("config") or {}
    durable = args.get("durable", False)
    check_bucket_name(name)
    info = server.handlers.get(handler_name)
    if info is None:
        raise UnknownHandler(
            f"the handlers module defines no handler {handler_name[:100]!r}; "
            f"handlers: {', '.join(sorted(server.handlers))}"
        )
    if name in server.buckets or name in server.creating:
        raise BucketExists(f"bucket {name!r} exists already")
    row = BucketRow(name, handler_name, config, durable, time.time())
    # Build the handler before storing anything: a config it rejects leaves no trace.
    bucket = Bucket(row, info)
    if bucket.broken:
        raise HandlerError(bucket.broken)
    server.creating.add(name)
    try:
        await server.db.insert_bucket(row)
    finally:
        server.creating.discard(name)
    server.add_bucket(bucket)
    server.log.info(
        "user %r created bucket %r (handler %s%s)",
        conn.user.name if conn.user else None,
        name,
        handler_name,
        ", durable" if durable else "",
    )
    return bucket.describe()


@_op
def op_list_buckets(conn: ServerConnection, args: dict[str, Any]) -> Any:
    return [
        bucket.describe()
        for name, bucket in sorted(conn.server.buckets.items())
        if conn.can_see(name)
    ]


@_op
def op_bucket_info(conn: ServerConnection, args: dict[str, Any]) -> Any:
    name = args["bucket"]
    bucket = conn.server.buckets.get(name)
    if bucket is None:
        conn.bucket(name)  # raises UnknownBucket
    assert bucket is not None
    info = bucket.describe()
    info["jobs"] = {job_name: job.statistics() for job_name, job in bucket.jobs.items()}
    return info


@_op
async def op_delete_bucket(conn: ServerConnection, args: dict[str, Any]) -> Any:
    server = conn.server
    name = args["bucket"]
    if name not in server.buckets:
        conn.bucket(name)  # raises UnknownBucket
    await server.db.delete_bucket(name)
    await server.remove_bucket(name)
    server.log.info("user %r deleted bucket %r", conn.user.name if conn.user else None, name)
    return None


@_op
def op_list_handlers(conn: ServerConnection, args: dict[str, Any]) -> Any:
    return [info.describe() for _, info in sorted(conn.server.handlers.items())]


@_op
def op_stats(conn: ServerConnection, args: dict[str, Any]) -> Any:
    return conn.server.statistics()


missing = set(OPS) - set(IMPLEMENTATIONS) - {"send"}
assert not missing, f"ops without an implementation: {missing}"
