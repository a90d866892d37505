"""The database file: SQLite, schema migrations, buckets, users and permissions."""

from .database import Database
from .passwords import hash_password, verify_password
from .rows import AuditEntry, BucketRow, TokenRow, UserRow

__all__ = [
    "AuditEntry",
    "BucketRow",
    "Database",
    "TokenRow",
    "UserRow",
    "hash_password",
    "verify_password",
]
