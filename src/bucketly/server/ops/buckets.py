"""The ops of buckets (creating, configuring, deleting, viewing, dumping), and hello, ping, stats.

``send``, the hot path, lives in connection.py; the ops of accounts in ``accounts.py``; how an op
is written and registered, in ``registry.py``.
"""

from __future__ import annotations

import time
from typing import Any

from ...buckets import Bucket
from ...buckets.records import BucketJournal
from ...buckets.snapshots import check_interval
from ...errors import BadArgument, BucketExists, HandlerError, NotMergeable, UnknownHandler
from ...handlers import DUMP_MERGE_KEY
from ...protocol import PROTOCOL_VERSION, check_bucket_name, check_partition
from ...store import PERSISTENCE_LEVELS, BucketRow
from .registry import Session, op

__all__: list[str] = []


@op
def op_hello(conn: Session, args: dict[str, Any]) -> Any:
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


@op
def op_ping(conn: Session, args: dict[str, Any]) -> Any:
    return "pong"


@op
def op_view(conn: Session, args: dict[str, Any]) -> Any:
    bucket = conn.bucket(args["bucket"])
    view_args = args.get("args") or {}
    if not all(type(key) is str for key in view_args):
        raise BadArgument("view: the keys of 'args' must be strings")
    if bucket.row.partition is not None and bucket.info is not None:
        name = args["view"]
        if name in bucket.info.views and name not in bucket.info.merges:
            raise NotMergeable(
                f"bucket {bucket.name!r} is partitioned, and view {bucket.row.handler}.{name} "
                "declares no merge (@bucketly.view(merge=...)): one partition's answer would "
                "be wrong; declare how the partitions' results combine"
            )
    return bucket.view(args["view"], view_args)


@op
def op_merge(conn: Session, args: dict[str, Any]) -> Any:
    bucket = conn.bucket(args["bucket"])
    info = bucket.info
    if info is None:
        raise UnknownHandler(f"bucket {bucket.name!r} is broken: {bucket.broken}")
    name = args.get("view", DUMP_MERGE_KEY)
    merge = info.merges.get(name)
    what = "the dump" if name == DUMP_MERGE_KEY else f"view {name!r}"
    if merge is None:
        raise NotMergeable(f"handler {info.name} declares no merge for {what}")
    if not callable(merge):
        raise BadArgument(
            f"{what} of handler {info.name} merges with the built-in {merge!r}: the client "
            "merges it (bucketly.merging)"
        )
    try:
        return merge(args["results"])
    except BaseException as exc:
        raise HandlerError(
            f"the merge of {what} of handler {info.name} raised {type(exc).__name__}: {exc}"
        ) from None


@op
def op_dump(conn: Session, args: dict[str, Any]) -> Any:
    return conn.bucket(args["bucket"]).dump()


@op
async def op_create_bucket(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name, handler_name = args["bucket"], args["handler"]
    config = args.get("config") or {}
    persistence = _persistence(args) or "memory"
    interval = args.get("snapshot_interval")
    if interval is not None:
        interval = check_interval(interval)
    partition = args.get("partition")
    check_bucket_name(name)
    if partition is not None:
        check_partition(partition)
    info = server.handlers.get(handler_name)
    if info is None:
        raise UnknownHandler(
            f"the handlers module defines no handler {handler_name[:100]!r}; "
            f"handlers: {', '.join(sorted(server.handlers))}"
        )
    if name in server.buckets or name in server.creating:
        raise BucketExists(f"bucket {name!r} exists already")
    row = BucketRow(name, handler_name, config, persistence, time.time(), interval, partition)
    # Build the handler before storing anything: a config it rejects leaves no trace.
    bucket = Bucket(row, info)
    if bucket.broken:
        raise HandlerError(bucket.broken)
    server.creating.add(name)
    try:
        await server.db.insert_bucket(row)
    finally:
        server.creating.discard(name)
    if persistence == "durable":
        bucket.journal = BucketJournal()
    elif persistence == "snapshot":
        server.snapshots.track(bucket)
    server.add_bucket(bucket)
    server.log.info(
        "user %r created bucket %r (handler %s, %s)",
        conn.user.name if conn.user else None,
        name,
        handler_name,
        persistence,
    )
    return bucket.describe()


@op
def op_list_buckets(conn: Session, args: dict[str, Any]) -> Any:
    # Full info (its config may hold credentials) needs `view`; other grants show the name,
    # and the partitioning that a sender's routing client needs.
    return [
        bucket.describe() if conn.allowed("view", name) else _name_only(bucket)
        for name, bucket in sorted(conn.server.buckets.items())
        if conn.can_see(name)
    ]


def _name_only(bucket: Bucket) -> dict[str, Any]:
    if bucket.row.partition is None:
        return {"name": bucket.name}
    return {"name": bucket.name, "partition": bucket.row.partition}


@op
def op_bucket_info(conn: Session, args: dict[str, Any]) -> Any:
    name = args["bucket"]
    bucket = conn.server.buckets.get(name)
    if bucket is None:
        conn.bucket(name)  # raises UnknownBucket
    assert bucket is not None
    info = bucket.describe()
    info["jobs"] = {job_name: job.statistics() for job_name, job in bucket.jobs.items()}
    info["durability"] = bucket.journal.describe() if bucket.journal is not None else None
    info["snapshots"] = bucket.snapshots.describe() if bucket.snapshots is not None else None
    return info


@op
async def op_configure_bucket(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    bucket = conn.bucket(args["bucket"])
    level = _persistence(args)
    user = conn.user.name if conn.user else None
    if "snapshot_interval" in args:
        seconds = check_interval(args["snapshot_interval"])
        if seconds != bucket.row.snapshot_interval:
            await server.snapshots.set_interval(bucket, seconds)
            server.log.info("user %r set the snapshot interval of bucket %r to %gs", user,
                            bucket.name, seconds)
    if level is not None and level != bucket.row.persistence:
        # In order with the bucket's queued durable sends and its snapshots (snapshots.py).
        before = bucket.row.persistence
        await server.snapshots.set_persistence(bucket, level)
        server.log.info("user %r moved bucket %r from %s to %s", user, bucket.name, before,
                        level)
    return bucket.describe()


def _persistence(args: dict[str, Any]) -> str | None:
    """The level ``persistence`` and ``durable`` ask for (None: neither is given)."""
    level = args.get("persistence")
    if level is not None and level not in PERSISTENCE_LEVELS:
        raise BadArgument(
            f"persistence must be one of {', '.join(PERSISTENCE_LEVELS)}, not {level[:50]!r}"
        )
    if "durable" in args:
        durable = "durable" if args["durable"] else "memory"
        if level is not None and (level == "durable") != args["durable"]:
            raise BadArgument(
                f"durable={'true' if args['durable'] else 'false'} contradicts persistence "
                f"{level!r}: give one of them"
            )
        level = level or durable
    return level


@op
async def op_delete_bucket(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    name = args["bucket"]
    bucket = server.buckets.get(name)
    if bucket is None:
        conn.bucket(name)  # raises UnknownBucket
    assert bucket is not None
    # In order with the bucket's queued durable sends, which would otherwise be logged after
    # the deletion, and with its snapshots; the definition and the state on disk go in one
    # transaction.
    async with server.snapshots.lock:
        await server.durable.delete(bucket)
        bucket.snapshots = None
        await server.remove_bucket(name)
    server.log.info("user %r deleted bucket %r", conn.user.name if conn.user else None, name)
    return None


@op
def op_list_handlers(conn: Session, args: dict[str, Any]) -> Any:
    return [info.describe() for _, info in sorted(conn.server.handlers.items())]


@op
def op_handlers_module(conn: Session, args: dict[str, Any]) -> Any:
    server = conn.server
    assert server.handlers_module is not None
    return {**server.handlers_module.describe(), "reloads": server.reloads}


@op
def op_reload(conn: Session, args: dict[str, Any]) -> Any:
    user = conn.user.name if conn.user is not None else None
    return conn.server.reload(force=args.get("force", False), by=user, peer=conn.peer_host)


@op
def op_stats(conn: Session, args: dict[str, Any]) -> Any:
    return conn.server.statistics()
