"""What a logged-in connection may do: its user's grants, narrowed by its token's, cached.

A grant is ``(permission, pattern)``; ``*`` as the permission is all of them, and the pattern is
matched against bucket names (``fnmatchcase``; server-wide permissions are granted on ``*``). A
connection logged in with a narrowed token needs both a grant of its user and one of the token.
Decisions are cached per connection, keyed by (permission, bucket), until grants change anywhere
(the connection then calls ``clear``), and the cache is emptied when it reaches
``MAX_CACHED_DECISIONS`` entries, so a client naming millions of buckets cannot grow it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ..protocol.ops import PERMISSIONS

__all__ = ["MAX_CACHED_DECISIONS", "Decisions", "covers", "sees"]

#: Permission decisions cached per connection.
MAX_CACHED_DECISIONS = 1024
#: Permissions that give sight of a bucket in ``list_buckets``.
_BUCKET_PERMISSIONS = frozenset(
    ["*", *(name for name, p in PERMISSIONS.items() if p.kind == "bucket")]
)

Grants = Iterable[tuple[str, str]]


def covers(grants: Grants, permission: str, bucket: str | None) -> bool:
    """Whether ``grants`` allow ``permission`` (on ``bucket``, for a per-bucket one)."""
    return any(
        (granted == "*" or granted == permission)
        and (bucket is None or fnmatch.fnmatchcase(bucket, pattern))
        for granted, pattern in grants
    )


def sees(grants: Grants, bucket: str) -> bool:
    """Whether ``grants`` give any per-bucket permission on ``bucket``."""
    return any(
        granted in _BUCKET_PERMISSIONS and fnmatch.fnmatchcase(bucket, pattern)
        for granted, pattern in grants
    )


class Decisions:
    """The cached decisions of one connection."""

    __slots__ = ("cache",)

    def __init__(self) -> None:
        #: (permission, bucket) -> allowed; the send hot path reads it directly.
        self.cache: dict[tuple[str, str | None], bool] = {}

    def clear(self) -> None:
        self.cache.clear()

    def allowed(self, user: Grants, token: Grants | None, permission: str,
                bucket: str | None) -> bool:
        key = (permission, bucket)
        cached = self.cache.get(key)
        if cached is None:
            if len(self.cache) >= MAX_CACHED_DECISIONS:
                self.cache.clear()
            cached = self.cache[key] = covers(user, permission, bucket) and (
                token is None or covers(token, permission, bucket)
            )
        return cached
