"""The database file: SQLite, schema migrations, buckets, users and permissions."""

from .database import BucketRow, Database, UserRow
from .passwords import hash_password, verify_password

__all__ = ["BucketRow", "Database", "UserRow", "hash_password", "verify_password"]
