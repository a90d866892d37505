"""The implementation of every op but ``send``: ``buckets`` (buckets, views, stats) and
``accounts`` (logging in, users, passwords, grants, tokens, the audit trail), registered in
``registry.IMPLEMENTATIONS``."""

from ...protocol import OPS
from . import accounts, buckets  # noqa: F401  (each registers its ops)
from .registry import IMPLEMENTATIONS, ServerState, Session

__all__ = ["IMPLEMENTATIONS", "ServerState", "Session"]

_missing = set(OPS) - set(IMPLEMENTATIONS) - {"send"}
assert not _missing, f"ops without an implementation: {_missing}"
