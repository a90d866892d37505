"""Measure the buffer at work: the same clicks into PostgreSQL, through bucketly or directly.

    python examples/unique_clicks/measure_buffer.py --seconds 60 --rate 500

Scenario ``bucketly``: a bucketlyd (started here, on a free port) takes the generator's clicks and
flushes the new (url, user) pairs every ``--flush-seconds``; stopping it at the end runs the
flush once more. Scenario ``direct``: the same processes send the same clicks straight to
PostgreSQL, one transaction per click (insert the pair; if it is new, add one to the URL's
count): what producers do without a buffer.

For each it prints the clicks per second the producers achieved, the transactions that reached
PostgreSQL, and the rows inserted and updated in the run's own tables (``pg_stat_user_tables``,
exact). It also prints what the whole server saw meanwhile, commits in the database
(``pg_stat_database``) and WAL written by the cluster (``pg_stat_wal``): those include anything
else the server was doing. Both runs must end with exactly the ground truth in ``url_counts``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
import generate  # the example's own modules: run as a script, this directory is on sys.path
import handlers
import psycopg
from psycopg import sql

from bucketly.testing import run_server

HERE = Path(__file__).resolve().parent

#: Seconds to let backends report their statistics (PostgreSQL 15 flushes them at most once a
#: second, and at exit) before reading pg_stat_* after a run.
STATS_SETTLE_SECONDS = 1.5

_DIRECT_WRITE = """
    WITH inserted AS (
        INSERT INTO {schema}.clicks_seen (url, user_id) VALUES (%s, %s)
        ON CONFLICT DO NOTHING
        RETURNING url
    )
    INSERT INTO {schema}.url_counts (url, unique_users)
    SELECT url, 1 FROM inserted
    ON CONFLICT (url) DO UPDATE
    SET unique_users = url_counts.unique_users + 1, updated_at = now()
"""


def pg_statistics(dsn: str) -> dict[str, int]:
    time.sleep(STATS_SETTLE_SECONDS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
            "blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        wal = conn.execute("SELECT wal_records, wal_bytes, wal_fpi FROM pg_stat_wal").fetchone()
    assert row is not None and wal is not None
    names = ["xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted"]
    stats = dict(zip(names, (int(v) for v in row[:5]), strict=True))
    stats.update(wal_records=int(wal[0]), wal_bytes=int(wal[1]), wal_fpi=int(wal[2]))
    return stats


def create_tables(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        handlers.ensure_schema(cur, schema)


def url_counts(dsn: str, schema: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT url, unique_users FROM {}.url_counts")
        rows = conn.execute(query.format(sql.Identifier(schema))).fetchall()
    return {url: int(n) for url, n in rows}


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def write_directly(
    dsn: str, schema: str, worker: int, count: int, rate: float, stream: tuple[int, int, int, float]
) -> tuple[int, float]:
    """One producer without a buffer: a transaction per click. Returns (clicks, seconds)."""
    seed, urls, users, zipf = stream
    query = sql.SQL(_DIRECT_WRITE).format(schema=sql.Identifier(schema))
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        started = time.monotonic()
        sent = 0
        for chunk in generate.clicks(seed, worker, count, urls, users, zipf):
            for event in chunk:
                cur.execute(query, (event["url"], event["user"]))
                sent += 1
                if rate and sent % 10 == 0:
                    ahead = started + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        return sent, time.monotonic() - started


def table_statistics(dsn: str, schema: str) -> dict[str, int]:
    """Rows inserted and updated in the run's own tables: exact, whatever else the server does."""
    time.sleep(STATS_SETTLE_SECONDS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT sum(n_tup_ins), sum(n_tup_upd) FROM pg_stat_user_tables WHERE schemaname = %s",
            (schema,),
        ).fetchone()
    assert row is not None
    return {"rows_inserted": int(row[0] or 0), "rows_updated": int(row[1] or 0)}


def run_scenario(
    scenario: str, dsn: str, options: dict[str, Any], truth: dict[str, int]
) -> dict[str, Any]:
    schema = f"measure_{scenario}_{uuid.uuid4().hex[:8]}"
    rate, processes = options["rate"], options["processes"]
    stream = (options["seed"], options["urls"], options["users"], options["zipf"])
    events = options["events"]
    create_tables(dsn, schema)
    final_flush = 0.0
    try:
        before = pg_statistics(dsn)
        if scenario == "bucketly":
            with run_server(handlers=HERE / "handlers.py") as server:
                command = [
                    sys.executable, str(HERE / "generate.py"), "--json",
                    "--server", f"{server.host}:{server.port}",
                    "--events", str(events), "--rate", str(rate), "--processes", str(processes),
                    "--seed", str(stream[0]), "--urls", str(stream[1]),
                    "--users", str(stream[2]), "--zipf", str(stream[3]),
                    "--dsn", dsn, "--schema", schema,
                    "--flush-seconds", str(options["flush_seconds"]),
                ]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise click.ClickException(f"the generator failed:\n{done.stderr}")
                produced = json.loads(done.stdout)
                sent, sending = produced["events"], produced["seconds"]
                # Stopping runs the flush once more: it writes what the last minute brought.
                started = time.monotonic()
                server.stop()
                final_flush = time.monotonic() - started
        else:
            jobs = [
                (dsn, schema, worker, count, rate / processes, stream)
                for worker, count in enumerate(generate.split(events, processes))
            ]
            with multiprocessing.get_context("spawn").Pool(processes) as pool:
                results = pool.starmap(write_directly, jobs)
            sent, sending = sum(n for n, _ in results), max(s for _, s in results)
        after = pg_statistics(dsn)
        tables = table_statistics(dsn, schema)
        correct = url_counts(dsn, schema) == truth
        with psycopg.connect(dsn, autocommit=True) as conn:
            flushes_query = sql.SQL("SELECT count(*) FROM {}.flushes")
            flushes = conn.execute(flushes_query.format(sql.Identifier(schema))).fetchone()
    finally:
        drop_schema(dsn, schema)
    delta = {key: after[key] - before[key] for key in before}
    ours = int(flushes[0]) if scenario == "bucketly" and flushes else sent
    return {
        "scenario": scenario,
        "clicks": sent,
        "seconds": round(sending, 2),
        "clicks_per_second": round(sent / sending),
        "final_flush_seconds": round(final_flush, 2),
        "transactions": ours,
        "transactions_per_minute": round(ours / max(sending, 1.0) * 60, 1),
        **tables,
        "counts_exact": correct,
        "database_commits": delta["xact_commit"],
        "cluster_wal_bytes": delta["wal_bytes"],
        "cluster_wal_records": delta["wal_records"],
    }


@click.command(context_settings={"show_default": True, "max_content_width": 100})
@click.option("--seconds", default=60.0, help="how long the producers send at --rate")
@click.option(
    "--rate", default=500.0, help="clicks per second, all producers together; 0: flat out"
)
@click.option("--events", type=int, default=None, help="clicks to send [default: rate x seconds]")
@click.option("--processes", "-p", default=4, help="producer processes")
@click.option("--flush-seconds", default=60.0, help="bucketly's flush interval for the run")
@click.option("--urls", default=1_000, help="distinct URLs")
@click.option("--users", default=10_000, help="distinct users")
@click.option("--zipf", default=1.1, help="URL popularity skew")
@click.option("--seed", default=1)
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(["bucketly", "direct"]),
    default=["bucketly", "direct"],
    help="which runs to make",
)
@click.option(
    "--dsn",
    default=lambda: os.environ.get(handlers.DSN_ENV, handlers.DEFAULT_DSN),
    show_default=f"${handlers.DSN_ENV} or {handlers.DEFAULT_DSN}",
)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per scenario")
def main(dsn: str, scenarios: list[str], as_json: bool, **options: Any) -> None:
    """Send the same clicks through bucketly and directly; print what PostgreSQL saw."""
    if options["events"] is None:
        if not options["rate"]:
            raise click.UsageError("--rate 0 (flat out) needs --events")
        options["events"] = round(options["seconds"] * options["rate"])
    stream = (options["seed"], options["urls"], options["users"], options["zipf"])
    pairs = generate.unique_pairs(stream[0], options["events"], options["processes"], *stream[1:])
    truth = {url: len(users) for url, users in pairs.items()}
    for scenario in scenarios:
        result = run_scenario(scenario, dsn, options, truth)
        if as_json:
            print(json.dumps(result), flush=True)
            continue
        print(
            f"{scenario:>8}: {result['clicks']:,} clicks in {result['seconds']} s "
            f"({result['clicks_per_second']:,}/s), final flush {result['final_flush_seconds']} s; "
            f"PostgreSQL: {result['transactions']:,} transactions "
            f"({result['transactions_per_minute']:,}/min), "
            f"{result['rows_inserted']:,} rows inserted, {result['rows_updated']:,} updated; "
            f"counts exact: {result['counts_exact']}; whole server meanwhile: "
            f"{result['database_commits']:,} commits, "
            f"{result['cluster_wal_bytes'] / 1e6:,.1f} MB WAL",
            flush=True,
        )


if __name__ == "__main__":
    main()
