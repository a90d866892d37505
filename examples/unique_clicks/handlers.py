"""Unique users per URL, counted in memory and written to PostgreSQL about once a minute.

Start a server with this module and create a bucket (see README.md)::

    bucketlyd --bucket-handlers examples/unique_clicks/handlers.py
    bucketly -u admin bucket create clicks UniqueClicks --config '{"flush_seconds": 60}'

Events are clicks, ``{"url": "/pricing", "user": "u42"}``. The bucket keeps the set of users per
URL, answers the views ``count(url)``, ``top(n)`` and ``status()``, and every ``flush_seconds``
(default 60) writes the (url, user) pairs it has seen since the last successful write to
PostgreSQL, in one transaction.

Why the PostgreSQL side stays exact
-----------------------------------
PostgreSQL stores the set itself, ``clicks_seen(url, user_id)`` with a primary key, and a count per
URL, ``url_counts(url, unique_users)``. A flush inserts its pairs with ``ON CONFLICT DO NOTHING``
and adds to ``url_counts`` only the rows that were actually inserted (``RETURNING``), in the same
transaction. So:

- replaying a batch (the commit went through but its acknowledgement was lost) inserts nothing
  and adds nothing;
- two bucketly servers flushing the same (url, user) pair count it once: the second insert waits
  for the first transaction and then does nothing;
- pairs are written in one global sort order, so two concurrent flushes take their row locks in
  the same order and cannot deadlock.

Why ingestion never waits for PostgreSQL
----------------------------------------
``flush`` runs serialized with the events but only *takes* the pending pairs (a dict swap) and
returns a ``bucketly.Job``. The write runs in a worker thread while the bucket goes on taking
events into a fresh ``pending``. If the write fails (PostgreSQL down, slow, restarted), the job's
``on_failure`` merges the taken pairs back into ``pending`` and the next run writes them all.

Configuration keys (the bucket's config):

``dsn``
    libpq connection string; default ``$BUCKETLY_EXAMPLE_DSN`` or ``DEFAULT_DSN``.
``schema``
    PostgreSQL schema for the tables, created if missing; default ``unique_clicks``.
``flush_seconds``
    Seconds between flushes; default 60.
``timeout``
    Seconds a flush may take (connection, statements) before it fails and is retried; default 30.
``source``
    Label of this server in the ``flushes`` table; default the host name and process id.
"""

from __future__ import annotations

import heapq
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from sys import intern
from typing import Any

import psycopg
from psycopg import sql

import bucketly

__all__ = [
    "DEFAULT_DSN",
    "DEFAULT_SCHEMA",
    "DSN_ENV",
    "FlushResult",
    "UniqueClicks",
    "ensure_schema",
    "write_batch",
]

DSN_ENV = "BUCKETLY_EXAMPLE_DSN"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_SCHEMA = "unique_clicks"
#: A flush that cannot connect, or whose statements run longer than this, fails and is retried
#: at the next run: a PostgreSQL that hangs must not hold the pending pairs forever.
DEFAULT_TIMEOUT_SECONDS = 30.0
#: Pairs sent per INSERT statement. One statement per pair would cost a round trip each; one
#: statement for a million pairs would build a huge parameter. 20,000 pairs are ~1 MB.
PAIRS_PER_STATEMENT = 20_000

# -- The PostgreSQL side ----------------------------------------------------------------------

_TABLES = [
    """CREATE TABLE IF NOT EXISTS {schema}.clicks_seen (
        url text NOT NULL,
        user_id text NOT NULL,
        PRIMARY KEY (url, user_id)
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.url_counts (
        url text PRIMARY KEY,
        unique_users bigint NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS {schema}.flushes (
        at timestamptz NOT NULL DEFAULT now(),
        source text NOT NULL,
        pairs bigint NOT NULL,
        new_pairs bigint NOT NULL,
        urls bigint NOT NULL
    )""",
]

# The pairs arrive sorted; unnest keeps their order, so every flush takes its row locks in the
# same order. Only the rows really inserted come back, counted per URL.
_INSERT_PAIRS = """
    WITH inserted AS (
        INSERT INTO {schema}.clicks_seen (url, user_id)
        SELECT * FROM unnest(%b::text[], %b::text[])
        ON CONFLICT DO NOTHING
        RETURNING url
    )
    SELECT url, count(*) FROM inserted GROUP BY url
"""

_ADD_COUNTS = """
    INSERT INTO {schema}.url_counts (url, unique_users)
    SELECT * FROM unnest(%b::text[], %b::bigint[])
    ON CONFLICT (url) DO UPDATE
    SET unique_users = url_counts.unique_users + excluded.unique_users, updated_at = now()
"""

_LOG_FLUSH = """
    INSERT INTO {schema}.flushes (source, pairs, new_pairs, urls) VALUES (%s, %s, %s, %s)
"""


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What one successful flush wrote."""

    #: Pairs sent to PostgreSQL.
    pairs: int
    #: Pairs PostgreSQL did not have yet (the rest were written before, by a replay or another
    #: server).
    new_pairs: int
    #: URLs whose count went up.
    urls: int
    seconds: float


def ensure_schema(cur: psycopg.Cursor[Any], schema: str) -> None:
    """Create the schema and its tables if missing (inside the caller's transaction)."""
    last_table = sql.Identifier(schema, "flushes").as_string(cur)
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (last_table,))
    row = cur.fetchone()
    if row is not None and row[0]:
        return
    # Two servers creating the same tables at once would collide on the catalogs' unique
    # indexes even with IF NOT EXISTS: let them take turns.
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"bucketly unique_clicks {schema}",))
    ident = sql.Identifier(schema)
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    for statement in _TABLES:
        cur.execute(sql.SQL(statement).format(schema=ident))


def write_batch(
    dsn: str,
    schema: str,
    batch: Mapping[str, Iterable[str]],
    *,
    source: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> FlushResult:
    """Write the (url, user) pairs of ``batch`` to PostgreSQL in one transaction.

    Idempotent: pairs PostgreSQL has already are skipped and not counted again, so a failed or
    ambiguous flush can simply be retried with the same batch. Raises ``psycopg.Error`` (or
    ``OSError``) when the write did not happen for sure; nothing is then left half-written.
    """
    started = time.perf_counter()
    urls: list[str] = []
    users: list[str] = []
    for url in sorted(batch):
        url_users = sorted(batch[url])
        urls.extend([url] * len(url_users))
        users.extend(url_users)

    ident = sql.Identifier(schema)
    insert_pairs = sql.SQL(_INSERT_PAIRS).format(schema=ident)
    added: dict[str, int] = {}
    # The connection's with block commits at its end, or rolls back if anything in it raised.
    with (
        psycopg.connect(
            dsn,
            connect_timeout=max(1, round(timeout)),
            # Fails a send the peer does not acknowledge in time (a dead host or network).
            tcp_user_timeout=round(timeout * 1000),
            application_name="bucketly unique_clicks",
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(
            "SELECT set_config('statement_timeout', %s, true)", (str(round(timeout * 1000)),)
        )
        ensure_schema(cur, schema)
        for start in range(0, len(urls), PAIRS_PER_STATEMENT):
            end = start + PAIRS_PER_STATEMENT
            cur.execute(insert_pairs, (urls[start:end], users[start:end]))
            for url, n in cur.fetchall():
                added[url] = added.get(url, 0) + n
        # After all the pairs, and sorted too: the url_counts row locks come in one order.
        counted = sorted(added)
        if counted:
            cur.execute(
                sql.SQL(_ADD_COUNTS).format(schema=ident),
                (counted, [added[url] for url in counted]),
            )
        new_pairs = sum(added.values())
        cur.execute(
            sql.SQL(_LOG_FLUSH).format(schema=ident),
            (source, len(urls), new_pairs, len(counted)),
        )
    return FlushResult(len(urls), new_pairs, len(counted), time.perf_counter() - started)


# -- The handler ------------------------------------------------------------------------------


def _merge(into: dict[str, set[str]], pairs: Mapping[str, Iterable[str]]) -> None:
    for url, users in pairs.items():
        existing = into.get(url)
        if existing is None:
            into[url] = set(users)
        else:
            existing.update(users)


def _pair_count(pairs: Mapping[str, set[str]]) -> int:
    return sum(len(users) for users in pairs.values())


def merge_status(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``status`` of a partitioned bucket: the partitions' sizes added, each one's last
    flush. A handler-defined merge: a server runs it for the routing client (docs/scaling.md)."""
    merged: dict[str, Any] = {
        key: sum(status[key] for status in statuses)
        for key in ("urls", "pairs", "pending", "flushing")
    }
    merged["last_flushes"] = [status["last_flush"] for status in statuses]
    return merged


def _bad_click(event: Any) -> ValueError:
    return ValueError(
        'a click is a map {"url": <string>, "user": <string or integer>}, '
        f"not {repr(event)[:100]}"
    )


class UniqueClicks(bucketly.Handler):
    """Unique users per URL; writes the new (url, user) pairs to PostgreSQL every minute.

    Events: ``{"url": str, "user": str | int}``. Views: ``count(url)``, ``top(n=10)``,
    ``status()``. Config: ``dsn``, ``schema``, ``flush_seconds``, ``timeout``, ``source``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.dsn = str(config.get("dsn") or os.environ.get(DSN_ENV) or DEFAULT_DSN)
        self.schema = config.get("schema", DEFAULT_SCHEMA)
        if not isinstance(self.schema, str) or not self.schema:
            raise ValueError("config 'schema' must be a non-empty string")
        self.timeout = float(config.get("timeout", DEFAULT_TIMEOUT_SECONDS))
        if not self.timeout > 0:
            raise ValueError("config 'timeout' must be a positive number of seconds")
        self.source = str(config.get("source") or f"{socket.gethostname()}:{os.getpid()}")
        #: Every user seen per URL: what the views answer from.
        self.users: dict[str, set[str]] = {}
        #: Pairs not in PostgreSQL yet, and not taken by a flush in progress.
        self.pending: dict[str, set[str]] = {}
        #: Pairs taken by the flush in progress; put back into ``pending`` if it fails.
        self.flushing: dict[str, set[str]] = {}
        self.last_flush: dict[str, Any] | None = None

    def on_events(self, events: list[Any]) -> None:
        users = self.users
        pending = self.pending
        for event in events:
            try:
                url = event["url"]
                user = event["user"]
            except (TypeError, KeyError, IndexError):
                raise _bad_click(event) from None
            if type(user) is not str:
                # 42 and "42" must be the same user: PostgreSQL stores text.
                if not isinstance(user, int) or isinstance(user, bool):
                    raise _bad_click(event)
                user = str(user)
            if type(url) is not str:
                raise _bad_click(event)
            seen = users.get(url)
            if seen is None:
                user = intern(user)
                users[url] = {user}
            elif user in seen:
                continue
            else:
                # One string object per distinct user, shared by every URL's set: about half
                # the memory per unique pair (bench/handlers.py has the figures).
                user = intern(user)
                seen.add(user)
            new = pending.get(url)
            if new is None:
                pending[url] = {user}
            else:
                new.add(user)

    def on_event(self, event: Any) -> None:
        self.on_events([event])

    # Partitioned by url (generate.py --partitioned), each url lives on one server: the sum of
    # the partitions' counts, their best n and their dumps joined are exact (docs/scaling.md).
    dump_merge = "dict_union"

    @bucketly.view(merge="sum")
    def count(self, url: str) -> int:
        """Unique users of ``url`` seen by this server."""
        return len(self.users.get(url, ()))

    @bucketly.view(merge="top")
    def top(self, n: int = 10) -> list[list[Any]]:
        """The ``n`` URLs with the most unique users, as ``[url, count]`` pairs."""
        if not isinstance(n, int) or n < 0:
            raise ValueError("top(n): n must be a non-negative integer")
        best = heapq.nlargest(n, self.users.items(), key=lambda item: len(item[1]))
        return [[url, len(users)] for url, users in best]

    @bucketly.view(merge=merge_status)
    def status(self) -> dict[str, Any]:
        """Sizes, and how the writes to PostgreSQL are going."""
        return {
            "urls": len(self.users),
            "pairs": _pair_count(self.users),
            "pending": _pair_count(self.pending),
            "flushing": _pair_count(self.flushing),
            "last_flush": self.last_flush,
        }

    def dump(self) -> dict[str, list[str]]:
        return {url: sorted(users) for url, users in self.users.items()}

    @bucketly.every(seconds=60, config_key="flush_seconds")
    def flush(self) -> bucketly.Job | None:
        """Take the pairs not written yet, and write them to PostgreSQL in a worker thread."""
        if not self.pending:
            return None
        batch, self.pending = self.pending, {}
        self.flushing = batch
        dsn, schema, source, timeout = self.dsn, self.schema, self.source, self.timeout

        def work() -> FlushResult:
            return write_batch(dsn, schema, batch, source=source, timeout=timeout)

        return bucketly.Job(work=work, on_success=self._flushed, on_failure=self._flush_failed)

    def _flushed(self, result: FlushResult) -> None:
        self.flushing = {}
        self.last_flush = {"at": time.time(), **asdict(result)}

    def _flush_failed(self, exc: BaseException) -> None:
        # The server counts and logs the failure (stats: jobs.flush); keep the pairs.
        _merge(self.pending, self.flushing)
        self.flushing = {}

    def snapshot(self) -> dict[str, Any]:
        # A flush in progress may never finish (a crash): save its pairs as pending, to be
        # written again. Writing twice is harmless, forgetting is not.
        pending: dict[str, set[str]] = {}
        _merge(pending, self.pending)
        _merge(pending, self.flushing)
        return {
            "users": {url: list(users) for url, users in self.users.items()},
            "pending": {url: list(users) for url, users in pending.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.users = {url: set(users) for url, users in state["users"].items()}
        self.pending = {url: set(users) for url, users in state["pending"].items()}
        self.flushing = {}
