"""The rows of the database file as the server reads them: plain objects, in memory.

``Database`` loads them at start-up and updates them after each committed write (database.py);
everything else reads them without touching SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocol.messages import pack
from ..protocol.ops import PERSISTENCE_LEVELS

__all__ = [
    "INITIAL_ADMIN",
    "PERSISTENCE_LEVELS",
    "AuditEntry",
    "BucketRow",
    "TokenRow",
    "UserRow",
    "grants_column",
]

#: The user created in an empty database file, and the password it starts with.
INITIAL_ADMIN = ("admin", "admin")


@dataclass(slots=True)
class BucketRow:
    name: str
    handler: str
    config: dict[str, Any]
    #: One of ``PERSISTENCE_LEVELS``.
    persistence: str
    created_at: float
    #: Seconds between two snapshots of a snapshot-level bucket; None: the default
    #: (``buckets.snapshots.DEFAULT_SNAPSHOT_INTERVAL``).
    snapshot_interval: float | None = None

    #: Set when the bucket is one partition of a partitioned bucket (docs/scaling.md): its
    #: ``key`` (an event field) or ``function`` (a key function's name, known to the clients),
    #: and the ``servers`` the routing client partitioned it over.
    partition: dict[str, Any] | None = None

    @property
    def durable(self) -> bool:
        return self.persistence == "durable"


@dataclass(slots=True)
class UserRow:
    name: str
    password_hash: str
    default_password: bool
    created_at: float
    #: (permission, bucket-name pattern) pairs; ``("*", "*")`` is everything.
    grants: set[tuple[str, str]] = field(default_factory=set)
    #: Bumped by every password change (in memory only: no login outlives a restart), so that
    #: connections logged in before it can tell and end (``server/connection.py``).
    epoch: int = 0


@dataclass(slots=True)
class TokenRow:
    id: int
    user: str
    name: str | None
    secret_hash: bytes
    created_at: float
    #: The (permission, pattern) grants the token is narrowed to, of its owner's; None: all.
    grants: frozenset[tuple[str, str]] | None = None
    #: When it stops working (Unix time); None: never.
    expires_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "created_at": self.created_at,
            "grants": None if self.grants is None else [
                {"permission": p, "pattern": pattern} for p, pattern in sorted(self.grants)
            ],
            "expires_at": self.expires_at,
        }


def grants_column(grants: frozenset[tuple[str, str]] | None) -> bytes | None:
    return None if grants is None else pack(sorted([p, pattern] for p, pattern in grants))


@dataclass(slots=True)
class AuditEntry:
    at: float
    event: str
    user: str | None
    peer: str | None
    detail: str
    count: int = 1
