"""Every op of the bucketly v1 protocol, declared once.

The server dispatches on this table, checks arguments and permissions from it, and the docs test
checks that docs/protocol.md has an entry for each op. Adding an op means adding it here first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import BadArgument

__all__ = ["BUCKET_NAME_RE", "OPS", "Arg", "Op", "check_bucket_name", "validate_args"]

#: Bucket names: 1 to 200 characters of letters, digits and ``_ . : -``, starting with a letter
#: or digit, so that they are safe in logs, file names and permission patterns.
BUCKET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}")

ArgType = Literal["str", "int", "bool", "map", "array", "any"]

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "map": (dict,),
    "array": (list,),
}


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
    #: ``"none"``: allowed before authentication; ``"authenticated"``: any logged-in user;
    #: ``"server"``: needs the server-wide ``permission``; ``"bucket"``: needs ``permission``
    #: on the bucket named by the ``bucket`` argument.
    scope: Literal["none", "authenticated", "server", "bucket"] = "authenticated"
    permission: str | None = None
    result: str = "nil"


_BUCKET = Arg("bucket", "str", doc="the bucket's name")

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
            "Authenticate the connection with a user name and password.",
            (Arg("user", "str"), Arg("password", "str")),
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
            ),
            scope="bucket",
            permission="send",
            result='map: {"accepted": <int>}',
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
                Arg("durable", "bool", False, "keep acknowledged events through crashes"),
            ),
            scope="server",
            permission="buckets.create",
            result="map: bucket info",
        ),
        Op(
            "list_buckets",
            "List the buckets the user holds any permission on.",
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
            result='array of maps: {"name", "doc", "views", "jobs"}',
        ),
        Op(
            "whoami",
            "Return the authenticated user and their permissions.",
            result='map: {"user", "permissions", "must_change_password"}',
        ),
        Op(
            "change_password",
            "Change the authenticated user's own password.",
            (Arg("old_password", "str"), Arg("new_password", "str")),
            result="nil",
        ),
        Op(
            "stats",
            "Server statistics: connections, events, per-bucket counters, jobs.",
            scope="server",
            permission="stats",
            result="map",
        ),
    ]
}


def validate_args(op: Op, args: dict[str, Any]) -> None:
    """Raise ``BadArgument`` unless ``args`` fit ``op``'s declared arguments."""
    known = {arg.name for arg in op.args}
    for name in args:
        if name not in known:
            raise BadArgument(f"{op.name}: unknown argument {name!r}")
    for arg in op.args:
        if arg.name not in args:
            if arg.required:
                raise BadArgument(f"{op.name}: missing argument {arg.name!r}")
            continue
        if arg.type == "any":
            continue
        value = args[arg.name]
        ok = isinstance(value, _PYTHON_TYPES[arg.type])
        if arg.type == "int" and isinstance(value, bool):
            ok = False
        if not ok:
            raise BadArgument(
                f"{op.name}: argument {arg.name!r} must be of type {arg.type}, "
                f"not {type(value).__name__}"
            )


def check_bucket_name(name: str) -> None:
    if not BUCKET_NAME_RE.fullmatch(name):
        raise BadArgument(
            f"invalid bucket name {name[:50]!r}: use 1 to 200 letters, digits, '_', '.', ':' "
            "or '-', starting with a letter or digit"
        )
