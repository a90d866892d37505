"""The database file: SQLite, schema migrations, buckets, users and permissions."""

from .database import Database
from .passwords import hash_password, verify_password
from .rows import PERSISTENCE_LEVELS, AuditEntry, BucketRow, TokenRow, UserRow

__all__ = [
    "PERSISTENCE_LEVELS",
    "AuditEntry",
    "BucketRow",
    "Database",
    "TokenRow",
    "UserRow",
    "hash_password",
    "verify_password",
]
