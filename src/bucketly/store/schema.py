"""The database file's schema: numbered migrations, applied in order by ``Database.open``.

A file records the number of the last migration applied (``PRAGMA user_version``); a newer
bucketly applies those after it, each in one transaction, and an older one refuses a file newer
than it knows. Never edit a released migration: append a new one. Statements are separated by
``;`` (so no ``;`` inside a comment).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

#: Numbered schema migrations. Never edit a released one: append a new one.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE buckets (
            name        TEXT PRIMARY KEY,
            handler     TEXT NOT NULL,
            config      BLOB NOT NULL,          -- MessagePack map
            durable     INTEGER NOT NULL DEFAULT 0,
            created_at  REAL NOT NULL
        );
        CREATE TABLE users (
            name              TEXT PRIMARY KEY,
            password_hash     TEXT NOT NULL,
            default_password  INTEGER NOT NULL DEFAULT 0,  -- still the initial admin/admin
            created_at        REAL NOT NULL
        );
        CREATE TABLE grants (
            user        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            permission  TEXT NOT NULL,
            pattern     TEXT NOT NULL,
            PRIMARY KEY (user, permission, pattern)
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE tokens (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused after a revoke
            user         TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            name         TEXT,
            secret_hash  BLOB NOT NULL,                       -- SHA-256 of the token's secret
            created_at   REAL NOT NULL
        );
        CREATE TABLE audit (
            id      INTEGER PRIMARY KEY,
            at      REAL NOT NULL,       -- Unix time of the first of `count` identical entries
            event   TEXT NOT NULL,       -- login_failed, permission_denied, user_created...
            user    TEXT,                -- who: the (claimed) user, or the acting one
            peer    TEXT,                -- from where: the client's IP address
            detail  TEXT NOT NULL,       -- what, never a password or token
            count   INTEGER NOT NULL DEFAULT 1
        );
        """,
    ),
    (
        3,
        # Durable buckets' journals (bucketly.store.journal): their records and snapshots.
        """
        CREATE TABLE durable_log (
            id            INTEGER PRIMARY KEY,
            bucket        TEXT NOT NULL,
            seq           INTEGER NOT NULL,   -- 1, 2, ... per bucket, in the order applied
            producer      TEXT,               -- the sending client's producer id, if it gave one
            producer_seq  INTEGER,            -- its sequence number for this batch
            events        BLOB NOT NULL,      -- the batch: a MessagePack array
            checksum      INTEGER NOT NULL,   -- CRC-32 of the fields above
            UNIQUE (bucket, seq)
        );
        CREATE TABLE durable_snapshots (
            bucket      TEXT PRIMARY KEY,
            seq         INTEGER NOT NULL,     -- the last log record it covers (deleted since)
            events      INTEGER NOT NULL,     -- events applied up to that record
            state       BLOB NOT NULL,        -- the handler's snapshot(), tagged MessagePack
            producers   BLOB NOT NULL,        -- MessagePack map: producer id -> last seq applied
            checksum    INTEGER NOT NULL,     -- CRC-32 of the fields above
            created_at  REAL NOT NULL
        );
        """,
    ),
    (
        4,
        # What it takes to know the file is whole (store/mark.py, durability.md "Damage").
        """
        CREATE TABLE file_mark (
            id       INTEGER PRIMARY KEY CHECK (id = 1),
            file_id  TEXT NOT NULL,     -- random, once: tells this file's mark from another's
            commits  INTEGER NOT NULL   -- write transactions committed (DATABASE-mark has it too)
        );
        INSERT INTO file_mark VALUES (1, lower(hex(randomblob(16))), 0);
        CREATE TABLE durable_heads (
            bucket  TEXT PRIMARY KEY,
            seq     INTEGER NOT NULL    -- the newest record committed: recovery must reach it
        );
        INSERT INTO durable_heads
            SELECT bucket, max(seq) FROM (
                SELECT bucket, seq FROM durable_log
                UNION ALL SELECT bucket, seq FROM durable_snapshots
            ) GROUP BY bucket
        """,
    ),
    (
        5,
        # Tokens narrowed to some of their owner's grants, and tokens that expire (security.md).
        """
        -- grants: MessagePack [[permission, pattern], ...], or NULL for all of the owner's.
        -- expires_at: Unix time, or NULL for never.
        ALTER TABLE tokens ADD COLUMN grants BLOB;
        ALTER TABLE tokens ADD COLUMN expires_at REAL;
        """,
    ),
    (
        6,
        # The shape of a durable snapshot's state (Handler.state_version): a recovery with a
        # class of another version migrates it (handlers.md, "Reloading handlers").
        """
        ALTER TABLE durable_snapshots ADD COLUMN state_version INTEGER NOT NULL DEFAULT 1;
        """,
    ),
    (
        7,
        # Three persistence levels instead of durable or not (rows.PERSISTENCE_LEVELS), and the
        # interval of a snapshot-level bucket's snapshots (NULL: the default). A snapshot-level
        # bucket keeps its snapshot in durable_snapshots, with no log.
        """
        ALTER TABLE buckets ADD COLUMN persistence TEXT NOT NULL DEFAULT 'memory'
            CHECK (persistence IN ('memory', 'snapshot', 'durable'));
        ALTER TABLE buckets ADD COLUMN snapshot_interval REAL;
        UPDATE buckets SET persistence = 'durable' WHERE durable = 1;
        ALTER TABLE buckets DROP COLUMN durable
        """,
    ),
    (
        8,
        # Partitioned buckets (docs/scaling.md): MessagePack {"key" | "function", "servers"},
        # or NULL for a bucket that lives on one server only.
        """
        ALTER TABLE buckets ADD COLUMN partition BLOB
        """,
    ),
]
