"""Every op of the bucketly v1 protocol, declared once.

The server dispatches on this table, checks arguments and permissions from it, and the docs test
checks that docs/protocol.md has an entry for each op. Adding an op means adding it here first.

Every op declares who may call it (``scope``, a required argument) and, unless any authenticated
user may, the one permission it needs. ``PERMISSIONS`` is the single list of permission names:
a grant of any other name is refused, and an op declaring one fails at import.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BadArgument

__all__ = [
    "BUCKET_NAME_RE",
    "MAX_BUCKET_NAME_LENGTH",
    "OPS",
    "PATTERN_RE",
    "PERMISSIONS",
    "PERSISTENCE_LEVELS",
    "USER_NAME_RE",
    "Arg",
    "Op",
    "Permission",
    "check_bucket_name",
    "check_grant",
    "check_partition",
    "check_user_name",
    "pattern_covers",
    "validate_args",
]

#: Bucket names: 1 to 200 characters of letters, digits and ``_ . : -``, starting with a letter
#: or digit, so that they are safe in logs, file names and permission patterns.
MAX_BUCKET_NAME_LENGTH = 200
BUCKET_NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:\-]{{0,{MAX_BUCKET_NAME_LENGTH - 1}}}")
#: Longest producer id accepted in a send: a client's random id needs 32 characters (a UUID in
#: hex); anything much longer is a mistake, and every bucket keeps one entry per producer.
MAX_PRODUCER_LENGTH = 64
#: Largest producer sequence number (durable buckets log it, and SQLite integers are signed
#: 64-bit).
MAX_PRODUCER_SEQ = 2**63 - 1
#: User names: 1 to 64 letters, digits and ``_ . @ -``, starting with a letter or digit.
USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}")
MAX_USER_NAME_LENGTH = 64
#: Audit entries the ``audit`` op returns when not told how many.
DEFAULT_AUDIT_LIMIT = 100
#: Bucket-name patterns of grants: bucket-name characters plus the glob characters ``* ? [ ] !``,
#: as long as a bucket name at most.
MAX_PATTERN_LENGTH = MAX_BUCKET_NAME_LENGTH
PATTERN_RE = re.compile(rf"[A-Za-z0-9_.:\-*?\[\]!]{{1,{MAX_PATTERN_LENGTH}}}")
_GLOB_CHARS = frozenset("*?[]!")

#: How much of a bucket's state survives the server (``persistence`` of ``create_bucket``):
#: ``memory``, nothing (the state lives in memory only); ``snapshot``, the state as of its
#: last snapshot, taken every ``snapshot_interval`` seconds and at shutdown
#: (buckets/snapshots.py); ``durable``, every acknowledged event, even on kill -9
#: (buckets/journal.py). docs/durability.md compares them.
PERSISTENCE_LEVELS = ("memory", "snapshot", "durable")

ArgType = Literal["str", "int", "number", "bool", "map", "array", "any"]

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
    "map": (dict,),
    "array": (list,),
}


@dataclass(frozen=True, slots=True)
class Permission:
    """A permission name. ``bucket`` ones are granted on bucket-name patterns; ``server`` ones
    are server-wide, granted on the pattern ``*`` only."""

    name: str
    kind: Literal["bucket", "server"]
    doc: str


#: Every permission there is. ``*`` in a grant stands for all of them.
PERMISSIONS: dict[str, Permission] = {
    p.name: p
    for p in [
        Permission("send", "bucket", "send events to the bucket"),
        Permission("view", "bucket", "call the bucket's views and see its description"),
        Permission("dump", "bucket", "dump the bucket's whole state"),
        Permission("configure", "bucket", "change the bucket's settings"),
        Permission("delete", "bucket", "delete the bucket"),
        Permission("buckets.create", "bucket", "create buckets whose name matches the pattern"),
        Permission("stats", "server", "read the server's statistics"),
        Permission(
            "users.manage",
            "server",
            "create, list and delete users, set their passwords, list and revoke their tokens",
        ),
        Permission("grants.manage", "server", "grant and revoke permissions, show a user's"),
        Permission("audit.read", "server", "read the audit trail"),
        Permission(
            "handlers.reload",
            "server",
            "reload the handlers module, every bucket's state carried into its new code",
        ),
        Permission(
            "create_token",
            "server",
            "create API tokens for oneself (a token can do at most what its owner can)",
        ),
    ]
}

Scope = Literal["none", "authenticated", "server", "bucket"]


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    type: ArgType
    required: bool = True
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Op:
    """One op: its arguments, who may call it, and what it returns."""

    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    #: Required. ``"none"``: allowed before authentication; ``"authenticated"``: any logged-in
    #: user; ``"server"``: needs the server-wide ``permission``; ``"bucket"``: needs
    #: ``permission`` on the bucket named by the ``bucket`` argument.
    scope: Scope = field(kw_only=True)
    permission: str | None = None
    #: For ops on one's own account (tokens): the permission needed to act on another user's.
    permission_for_others: str | None = None
    result: str = "nil"

    def __post_init__(self) -> None:
        # A wrong declaration is a bug in bucketly: fail at import, not on the first request.
        if any(arg.name in ("id", "op") for arg in self.args):
            raise ValueError(f"op {self.name}: 'id' and 'op' are the request's own keys")
        if self.scope in ("server", "bucket"):
            permission = PERMISSIONS.get(self.permission or "")
            if permission is None or permission.kind != self.scope:
                raise ValueError(f"op {self.name}: scope {self.scope} needs a {self.scope} "
                                 f"permission from PERMISSIONS, not {self.permission!r}")
        elif self.scope in ("none", "authenticated"):
            if self.permission is not None:
                raise ValueError(f"op {self.name}: scope {self.scope} takes no permission")
        else:
            raise ValueError(f"op {self.name}: unknown scope {self.scope!r}")
        if self.permission_for_others is not None and (
            PERMISSIONS.get(self.permission_for_others) is None
            or PERMISSIONS[self.permission_for_others].kind != "server"
        ):
            raise ValueError(f"op {self.name}: unknown permission_for_others")


_BUCKET = Arg("bucket", "str", doc="the bucket's name")
_USER = Arg("user", "str", doc="the user's name")

OPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op(
            "hello",
            "Say which protocol version the client speaks; returns server details.",
            (
                Arg("protocol", "int", False, "protocol version the client speaks (1)"),
                Arg("client", "str", False, "free-form client name, for logs"),
            ),
            scope="none",
            result='map: {"protocol", "server", "authenticated"}',
        ),
        Op(
            "auth",
            "Authenticate the connection with a user name and password, or with an API token.",
            (
                Arg("user", "str", False, "the user's name (with `password`)"),
                Arg("password", "str", False, "the user's password (with `user`)"),
                Arg("token", "str", False, "an API token, instead of `user` and `password`"),
            ),
            scope="none",
            result='map: {"user", "must_change_password"}',
        ),
        Op(
            "ping",
            "Check the connection; allowed before authentication.",
            scope="none",
            result='"pong"',
        ),
        Op(
            "send",
            "Send one event (`event`) or a batch (`events`) to a bucket.",
            (
                _BUCKET,
                Arg("event", "any", False, "one event (any value); give `event` or `events`"),
                Arg("events", "array", False, "a batch of events, applied in order"),
                Arg("ack", "bool", False, "false: no reply on success (errors still come back)"),
                Arg("producer", "str", False, "the sender's id, to recognise resends (with `seq`)"),
                Arg("seq", "int", False, "this batch's number from `producer`, increasing"),
            ),
            scope="bucket",
            permission="send",
            result='map: {"accepted": <int>, "duplicate"?: true}',
        ),
        Op(
            "view",
            "Call a named view of a bucket's handler with keyword arguments.",
            (
                _BUCKET,
                Arg("view", "str", doc="the view's name"),
                Arg("args", "map", False, "keyword arguments for the view (string keys)"),
            ),
            scope="bucket",
            permission="view",
            result="whatever the view returns",
        ),
        Op(
            "merge",
            "Merge per-partition results of a partitioned bucket's view (or dump) with the "
            "merge function its handler defines; reads no bucket state.",
            (
                _BUCKET,
                Arg("view", "str", False, "the view's name (default: the dump's merge)"),
                Arg("results", "array", doc="one result per partition, in server order"),
            ),
            scope="bucket",
            permission="view",
            result="the merged result",
        ),
        Op(
            "dump",
            "Return the whole state of a bucket, as its handler's dump() gives it.",
            (_BUCKET,),
            scope="bucket",
            permission="dump",
            result="whatever dump() returns",
        ),
        Op(
            "create_bucket",
            "Create a bucket with a handler from the server's handlers module.",
            (
                _BUCKET,
                Arg("handler", "str", doc="handler class name"),
                Arg("config", "map", False, "passed to the handler's __init__ (default {})"),
                Arg("persistence", "str", False, "what survives the server: `memory` (the "
                    "default), `snapshot` (the state as of the last snapshot) or `durable` "
                    "(every acknowledged event)"),
                Arg("durable", "bool", False, "true: the same as persistence `durable`"),
                Arg("snapshot_interval", "number", False, "seconds between the snapshots of "
                    "a snapshot-level bucket, 1 to 86400 (default 60)"),
                Arg(
                    "partition",
                    "map",
                    False,
                    'this bucket is one partition of a partitioned bucket: {"key": <event '
                    'field>} or {"function": <key function name>}, and "servers" (array of '
                    '"host:port", the servers it is partitioned over)',
                ),
            ),
            scope="bucket",
            permission="buckets.create",
            result="map: bucket info",
        ),
        Op(
            "list_buckets",
            "List the buckets the user holds any permission on.",
            scope="authenticated",
            result="array of bucket info maps",
        ),
        Op(
            "bucket_info",
            "Describe one bucket.",
            (_BUCKET,),
            scope="bucket",
            permission="view",
            result="map: bucket info",
        ),
        Op(
            "configure_bucket",
            "Change a bucket's settings: its persistence level, its snapshot interval.",
            (
                _BUCKET,
                Arg("persistence", "str", False, "move it to `memory`, `snapshot` or "
                    "`durable`"),
                Arg("durable", "bool", False, "true: persistence `durable`; false: `memory`"),
                Arg("snapshot_interval", "number", False, "seconds between its snapshots at "
                    "the snapshot level, 1 to 86400"),
            ),
            scope="bucket",
            permission="configure",
            result="map: bucket info",
        ),
        Op(
            "delete_bucket",
            "Delete a bucket, its definition and its state.",
            (_BUCKET,),
            scope="bucket",
            permission="delete",
            result="nil",
        ),
        Op(
            "list_handlers",
            "List the handlers the server's handlers module defines.",
            scope="authenticated",
            result='array of maps: {"name", "doc", "views", "jobs", "merges"}',
        ),
        Op(
            "handlers_module",
            "Which version of the handlers module is loaded: its file, SHA-256 and "
            "modification time, when it was loaded, how many reloads since the start.",
            scope="server",
            permission="stats",
            result='map: {"spec", "path", "sha256", "mtime", "loaded_at", "handlers", '
            '"reloads"}',
        ),
        Op(
            "reload",
            "Reload the handlers module from its file, every bucket's state carried into an "
            "instance of its new class; all or nothing (`reload_failed` changes nothing).",
            (
                Arg(
                    "force",
                    "bool",
                    False,
                    "drop the state of buckets whose class the new module no longer defines, "
                    "instead of refusing the reload (they become unavailable)",
                ),
            ),
            scope="server",
            permission="handlers.reload",
            result='map: {"module", "paused_seconds", "buckets": {name: {"status", '
            '"paused_seconds", "state_bytes", "migrated_from"?}}}',
        ),
        Op(
            "whoami",
            "Return the authenticated user and their permissions.",
            scope="authenticated",
            result='map: {"user", "permissions", "must_change_password"}',
        ),
        Op(
            "change_password",
            "Change the authenticated user's own password.",
            (Arg("old_password", "str"), Arg("new_password", "str")),
            scope="authenticated",
            result="nil",
        ),
        Op(
            "stats",
            "Server statistics: connections, events, per-bucket counters, jobs.",
            scope="server",
            permission="stats",
            result="map",
        ),
        Op(
            "create_user",
            "Create a user with a password and no permissions.",
            (_USER, Arg("password", "str", doc="the new user's password")),
            scope="server",
            permission="users.manage",
            result="nil",
        ),
        Op(
            "delete_user",
            "Delete a user, their grants and their tokens.",
            (_USER,),
            scope="server",
            permission="users.manage",
            result="nil",
        ),
        Op(
            "list_users",
            "List the users.",
            scope="server",
            permission="users.manage",
            result='array of maps: {"user", "created_at", "must_change_password", "tokens"}',
        ),
        Op(
            "set_password",
            "Set another user's password (no old password needed).",
            (_USER, Arg("password", "str", doc="the new password")),
            scope="server",
            permission="users.manage",
            result="nil",
        ),
        Op(
            "grant",
            "Grant a user a permission on the buckets matching a pattern.",
            (
                _USER,
                Arg("permission", "str", doc="a permission name, or `*` for all"),
                Arg("pattern", "str", False, "bucket-name pattern (default `*`)"),
            ),
            scope="server",
            permission="grants.manage",
            result="nil",
        ),
        Op(
            "revoke",
            "Revoke a grant made with `grant` (the same permission and pattern).",
            (
                _USER,
                Arg("permission", "str", doc="the permission name of the grant"),
                Arg("pattern", "str", False, "the pattern of the grant (default `*`)"),
            ),
            scope="server",
            permission="grants.manage",
            result="nil",
        ),
        Op(
            "permissions",
            "Show a user's grants.",
            (_USER,),
            scope="server",
            permission="grants.manage",
            result='array of maps: {"permission", "pattern"}',
        ),
        Op(
            "create_token",
            "Create an API token for the authenticated user; the token is shown only this once.",
            (
                Arg("name", "str", False, "a name to recognise the token by"),
                Arg(
                    "grants",
                    "array",
                    False,
                    'narrow the token to these of your grants: maps {"permission", "pattern"} '
                    "(default: all of them)",
                ),
                Arg("expires_in", "int", False, "seconds until the token stops working "
                    "(default: never)"),
            ),
            scope="server",
            permission="create_token",
            result='map: {"token", "id", "user", "name", "created_at", "grants", "expires_at"}',
        ),
        Op(
            "list_tokens",
            "List a user's API tokens (never the tokens themselves).",
            (Arg("user", "str", False, "whose tokens (default: your own)"),),
            scope="authenticated",
            permission_for_others="users.manage",
            result='array of maps: {"id", "user", "name", "created_at", "grants", "expires_at"}',
        ),
        Op(
            "revoke_token",
            "Revoke an API token: connections it authenticated lose their access.",
            (Arg("token_id", "int", doc="the token's id (`id` in `list_tokens`)"),),
            scope="authenticated",
            permission_for_others="users.manage",
            result="nil",
        ),
        Op(
            "audit",
            "Read the audit trail: failed logins, permission denials, user and grant changes.",
            (
                Arg(
                    "limit",
                    "int",
                    False,
                    f"most entries to return, newest first (default {DEFAULT_AUDIT_LIMIT})",
                ),
            ),
            scope="server",
            permission="audit.read",
            result="array of audit entry maps",
        ),
    ]
}


def validate_args(op: Op, args: dict[str, Any]) -> None:
    """Raise ``BadArgument`` unless ``args`` fit ``op``'s declared arguments."""
    known = {arg.name for arg in op.args}
    for name in args:
        if name not in known:
            raise BadArgument(f"{op.name}: unknown argument {_short(name)}")
    for arg in op.args:
        if arg.name not in args:
            if arg.required:
                raise BadArgument(f"{op.name}: missing argument {arg.name!r}")
            continue
        if arg.type == "any":
            continue
        value = args[arg.name]
        ok = isinstance(value, _PYTHON_TYPES[arg.type])
        if arg.type in ("int", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            raise BadArgument(
                f"{op.name}: argument {arg.name!r} must be of type {arg.type}, "
                f"not {type(value).__name__}"
            )


#: Most servers a bucket may be partitioned over: a client keeps a connection to each, and a
#: merged view asks every one. Past a few dozen, put a PostgreSQL (or Citus) behind fewer
#: larger servers instead (docs/scaling.md).
MAX_PARTITION_SERVERS = 256
#: Longest ``host:port`` of a partition's server, and of a partition key or function name.
MAX_PARTITION_NAME_LENGTH = 300


def check_partition(partition: dict[str, Any]) -> None:
    """Raise ``BadArgument`` unless ``partition`` is {"key" or "function": str, "servers"?:
    [str, ...]} (create_bucket's ``partition``)."""
    keys = set(partition)
    by = keys & {"key", "function"}
    if len(by) != 1 or keys - {"key", "function", "servers"}:
        raise BadArgument(
            'create_bucket: partition must be {"key": <event field>} or {"function": <name>}, '
            'with "servers" optionally'
        )
    (which,) = by
    value = partition[which]
    if type(value) is not str or not 0 < len(value) <= MAX_PARTITION_NAME_LENGTH:
        raise BadArgument(f"create_bucket: partition {which} must be a non-empty string")
    servers = partition.get("servers", [])
    if (
        type(servers) is not list
        or len(servers) > MAX_PARTITION_SERVERS
        or not all(type(s) is str and 0 < len(s) <= MAX_PARTITION_NAME_LENGTH for s in servers)
    ):
        raise BadArgument(
            f"create_bucket: partition servers must be an array of at most "
            f"{MAX_PARTITION_SERVERS} \"host:port\" strings"
        )


def check_bucket_name(name: str) -> None:
    if not BUCKET_NAME_RE.fullmatch(name):
        raise BadArgument(
            f"invalid bucket name {name[:50]!r}: use 1 to {MAX_BUCKET_NAME_LENGTH} letters, "
            "digits, '_', '.', ':' or '-', starting with a letter or digit"
        )


def check_user_name(name: str) -> None:
    if not USER_NAME_RE.fullmatch(name):
        raise BadArgument(
            f"invalid user name {name[:50]!r}: use 1 to 64 letters, digits, '_', '.', '@' or "
            "'-', starting with a letter or digit"
        )


def check_grant(permission: str, pattern: str) -> None:
    """Raise ``BadArgument`` unless ``(permission, pattern)`` is a grant that can exist."""
    if permission != "*" and permission not in PERMISSIONS:
        raise BadArgument(
            f"unknown permission {permission[:50]!r}; permissions: "
            f"{', '.join(PERMISSIONS)}, or * for all"
        )
    if not PATTERN_RE.fullmatch(pattern):
        raise BadArgument(
            f"invalid pattern {pattern[:50]!r}: 1 to {MAX_PATTERN_LENGTH} bucket-name characters "
            "and * ? [ ] !"
        )
    if permission in PERMISSIONS and PERMISSIONS[permission].kind == "server" and pattern != "*":
        raise BadArgument(f"{permission} is server-wide: grant it on the pattern '*'")


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every bucket name matching ``inner`` surely matches ``outer``.

    Deliberately conservative (used so that nobody grants more than they hold): true only when
    the patterns are equal, ``outer`` is ``*``, or ``outer`` is a plain prefix followed by ``*``
    (``clicks.*``) and ``inner`` starts with that prefix.
    """
    if outer == "*" or outer == inner:
        return True
    prefix = outer[:-1]
    return (
        outer.endswith("*")
        and not _GLOB_CHARS.intersection(prefix)
        and inner.startswith(prefix)
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
