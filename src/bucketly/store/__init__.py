"""The database file: SQLite, schema migrations, buckets, users and permissions."""

from .database import AuditEntry, BucketRow, Database, TokenRow, UserRow
from .passwords import hash_password, verify_password

__all__ = [
    "AuditEntry",
    "BucketRow",
    "Database",
    "TokenRow",
    "UserRow",
    "hash_password",
    "verify_password",
]
