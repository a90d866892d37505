"""The unique_clicks example: exact counts in PostgreSQL, whatever happens.

The handler and its PostgreSQL writer are tested in-process first; then through real bucketlyd
servers. Outages are made with ``PostgresProxy``, a TCP proxy in front of the real PostgreSQL
that the test switches off (connections refused, open ones cut) or makes hold a COMMIT or lose
its acknowledgement: the real server is never stopped, other things use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import ormsgpack
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import bucketly
from bucketly.testing import RunningServer, run_server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "unique_clicks"
HANDLERS = EXAMPLE / "handlers.py"
GENERATE = EXAMPLE / "generate.py"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


handlers = _load(HANDLERS, "unique_clicks_handlers")
generate = _load(GENERATE, "unique_clicks_generate")

DSN = os.environ.get(handlers.DSN_ENV, handlers.DEFAULT_DSN)
T = TypeVar("T")
Pairs = Mapping[str, set[str]]


# -- helpers ----------------------------------------------------------------------------------


def wait_for(check: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {timeout} s for {what}")
        time.sleep(0.05)


def counts(pairs: Pairs) -> dict[str, int]:
    return {url: len(users) for url, users in pairs.items()}


def union(*batches: Pairs) -> dict[str, set[str]]:
    merged: dict[str, set[str]] = {}
    for batch in batches:
        for url, users in batch.items():
            merged.setdefault(url, set()).update(users)
    return merged


def as_events(pairs: Pairs) -> list[dict[str, str]]:
    return [{"url": url, "user": user} for url, users in pairs.items() for user in users]


def _query(schema: str, query: str) -> dict[str, int]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        try:
            rows = conn.execute(sql.SQL(query).format(schema=sql.Identifier(schema))).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}  # no flush has created the tables yet
    return {url: int(n) for url, n in rows}


def pg_counts(schema: str) -> dict[str, int]:
    """url_counts, the per-URL counts the flushes maintain."""
    return _query(schema, "SELECT url, unique_users FROM {schema}.url_counts")


def pg_pairs_per_url(schema: str) -> dict[str, int]:
    """The same counts recomputed from the stored pairs: both must agree with the truth."""
    return _query(schema, "SELECT url, count(*) FROM {schema}.clicks_seen GROUP BY url")


def pg_flushes(schema: str) -> list[tuple[str, int, int]]:
    with psycopg.connect(DSN, autocommit=True) as conn:
        query = sql.SQL("SELECT source, pairs, new_pairs FROM {}.flushes ORDER BY at")
        rows = conn.execute(query.format(sql.Identifier(schema))).fetchall()
    return [(source, int(pairs), int(new)) for source, pairs, new in rows]


def assert_postgres_holds(schema: str, truth: Pairs) -> None:
    expected = counts(truth)
    wait_for(lambda: pg_counts(schema) == expected, f"PostgreSQL to hold {len(expected)} URLs")
    assert pg_pairs_per_url(schema) == expected


def run_job(job: bucketly.Job) -> Any:
    """Run a Job the way bucketlyd does: work, then on_success or on_failure."""
    try:
        result = job.work()
    except Exception as exc:
        if job.on_failure is not None:
            job.on_failure(exc)
        return exc
    if job.on_success is not None:
        job.on_success(result)
    return result


def clicks_of(seed: int, events: int, urls: int = 100, users: int = 400) -> dict[str, set[str]]:
    return generate.unique_pairs(seed, events, 1, urls, users, 1.0)


def send_clicks(client: bucketly.Client, seed: int, events: int) -> dict[str, set[str]]:
    """Send the generator's clicks (one stream) and return their unique pairs."""
    for chunk in generate.clicks(seed, 0, events, 100, 400, 1.0):
        client.send_many("clicks", chunk)
    client.flush()
    return clicks_of(seed, events)


def flush_stats(client: bucketly.Client) -> dict[str, Any]:
    return client.stats()["buckets"]["clicks"]["jobs"]["flush"]


@pytest.fixture
def schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own, dropped afterwards."""
    name = f"test_unique_clicks_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


# -- a TCP proxy to break PostgreSQL connections on purpose -----------------------------------

#: psycopg sends COMMIT as a simple query; the server answers with a CommandComplete "COMMIT".
COMMIT_QUERY = b"Q\x00\x00\x00\x0bCOMMIT\x00"
COMMIT_DONE = b"C\x00\x00\x00\x0bCOMMIT\x00"


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.closed = threading.Event()
        self.swallow_commit_reply = False

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class PostgresProxy:
    """Forwards 127.0.0.1:``port`` to PostgreSQL, until told to fail the way outages do.

    ``down()``: refuse new connections and cut the open ones; ``up()``: accept again.
    ``hold_commits``: keep each COMMIT from reaching the server until ``release_commits()``
    (``commit_held`` is set meanwhile): a flush stuck on a slow database.
    ``lose_commit_acks``: let the COMMIT through, then cut the connection before its reply
    reaches the client: the transaction is committed but the client cannot know it.
    """

    def __init__(self, dsn: str = DSN) -> None:
        params = conninfo_to_dict(dsn)
        self.upstream = (str(params.get("host", "127.0.0.1")), int(params.get("port", 5432)))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self.port))
        self.hold_commits = False
        self.lose_commit_acks = False
        self.commit_held = threading.Event()
        self.acks_lost = 0
        self._commits_released = threading.Event()
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.cut()

    def cut(self) -> None:
        with self._lock:
            links, self._links = self._links, set()
        for link in links:
            link.close()

    def release_commits(self) -> None:
        self.hold_commits = False
        self._commits_released.set()

    def close(self) -> None:
        self.release_commits()
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                self._links.add(link)
            threading.Thread(target=self._client_to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(link,), daemon=True).start()

    def _client_to_server(self, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := link.client.recv(65536):
                if COMMIT_QUERY in data:
                    if self.hold_commits:
                        self.commit_held.set()
                        while not self._commits_released.wait(0.05):
                            if link.closed.is_set():
                                return
                    if self.lose_commit_acks:
                        link.swallow_commit_reply = True
                link.server.sendall(data)
        link.close()

    def _server_to_client(self, link: _Link) -> None:
        swallowed = b""
        with contextlib.suppress(OSError):
            while data := link.server.recv(65536):
                if link.swallow_commit_reply:
                    swallowed += data
                    if COMMIT_DONE in swallowed:
                        self.acks_lost += 1  # committed, and the client will never hear it
                        break
                    continue
                link.client.sendall(data)
        link.close()


@pytest.fixture
def proxy() -> Iterator[PostgresProxy]:
    p = PostgresProxy()
    yield p
    p.close()


# -- the handler, in-process ------------------------------------------------------------------


def make_handler(**config: Any) -> Any:
    return handlers.UniqueClicks({"dsn": DSN, **config})


def test_the_server_can_load_the_handlers_module() -> None:
    found = bucketly.handlers.load_handlers(str(HANDLERS))
    info = found["UniqueClicks"]
    assert info.batches
    assert sorted(info.views) == ["count", "status", "top"]
    assert info.jobs["flush"].seconds == 60
    assert info.jobs["flush"].config_key == "flush_seconds"


def test_counts_unique_users_per_url() -> None:
    h = make_handler()
    h.on_events(
        [
            {"url": "/a", "user": "x"},
            {"url": "/a", "user": "x"},
            {"url": "/a", "user": 7},
            {"url": "/a", "user": "7"},  # the same user as 7: PostgreSQL stores text
            {"url": "/b", "user": "x"},
        ]
    )
    assert (h.count("/a"), h.count("/b"), h.count("/nowhere")) == (2, 1, 0)
    assert h.top() == [["/a", 2], ["/b", 1]]
    assert h.top(1) == [["/a", 2]]
    assert h.dump() == {"/a": ["7", "x"], "/b": ["x"]}
    assert h.status()["pending"] == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "/a"},
        {"user": "x"},
        "a string",
        {"url": 5, "user": "x"},
        {"url": "/a", "user": 1.5},
        {"url": "/a", "user": True},
    ],
)
def test_a_bad_click_is_refused_and_the_clicks_before_it_stay(bad: Any) -> None:
    h = make_handler()
    with pytest.raises(ValueError, match="a click is a map"):
        h.on_events([{"url": "/a", "user": "x"}, bad, {"url": "/a", "user": "y"}])
    assert h.dump() == {"/a": ["x"]}


def test_flush_takes_the_pending_pairs_and_a_failure_puts_them_back() -> None:
    h = make_handler()
    assert h.flush() is None  # nothing to write: no job, no connection
    h.on_events(as_events({"/a": {"1", "2"}}))
    job = h.flush()
    assert isinstance(job, bucketly.Job)
    assert (h.status()["pending"], h.status()["flushing"]) == (0, 2)

    # While the job runs, clicks go on; only the pairs never seen become pending.
    h.on_events(as_events({"/a": {"1", "3"}, "/b": {"1"}}))
    assert h.pending == {"/a": {"3"}, "/b": {"1"}}

    job.on_failure(psycopg.OperationalError("connection refused"))
    assert h.pending == {"/a": {"1", "2", "3"}, "/b": {"1"}}
    assert h.status()["flushing"] == 0

    retry = h.flush()
    assert isinstance(retry, bucketly.Job)
    retry.on_success(handlers.FlushResult(pairs=4, new_pairs=4, urls=2, seconds=0.01))
    assert (h.status()["pending"], h.status()["flushing"]) == (0, 0)
    assert h.status()["last_flush"]["new_pairs"] == 4
    assert h.flush() is None


def test_a_snapshot_taken_mid_flush_keeps_the_pairs_in_flight() -> None:
    h = make_handler()
    h.on_events(as_events({"/a": {"1", "2"}}))
    assert h.flush() is not None  # taken, never finished: the server crashes
    h.on_events(as_events({"/b": {"1"}}))
    state = ormsgpack.unpackb(ormsgpack.packb(h.snapshot()))

    restored = make_handler()
    restored.restore(state)
    assert restored.dump() == h.dump()
    assert restored.pending == {"/a": {"1", "2"}, "/b": {"1"}}


_CLICKS = st.lists(
    st.tuples(st.sampled_from(["/a", "/b", "/c"]), st.sampled_from(["1", "2", "3", "4"])),
    max_size=8,
)
_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("clicks"), _CLICKS),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("finish"), st.sampled_from(["ok", "refused", "ack lost"])),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_OPERATIONS)
def test_any_mix_of_clicks_and_failing_flushes_ends_with_exact_counts(
    operations: list[tuple[str, Any]],
) -> None:
    """A model of PostgreSQL (a set per URL, counting only new pairs) against the handler."""
    h = make_handler()
    stored: dict[str, set[str]] = {}
    counted: dict[str, int] = {}
    in_flight: list[tuple[bucketly.Job, dict[str, set[str]], dict[str, set[str]]]] = []

    def finish(outcome: str) -> None:
        job, batch, as_taken = in_flight.pop()
        assert batch == as_taken  # the worker thread's batch never changes under it
        if outcome != "refused":  # "ack lost": committed, but the job sees a failure
            for url, users in batch.items():
                new = users - stored.setdefault(url, set())
                stored[url] |= new
                counted[url] = counted.get(url, 0) + len(new)
        if outcome == "ok":
            job.on_success(handlers.FlushResult(0, 0, 0, 0.0))
        else:
            job.on_failure(OSError(outcome))

    def flush() -> None:
        job = h.flush()
        if job is not None:
            in_flight.append((job, h.flushing, {u: set(s) for u, s in h.flushing.items()}))

    for operation, arg in operations:
        if operation == "clicks":
            h.on_events([{"url": url, "user": user} for url, user in arg])
        elif operation == "flush" and not in_flight:  # bucketly never overlaps runs
            flush()
        elif operation == "finish" and in_flight:
            finish(arg)
    if in_flight:
        finish("ok")
    flush()  # the flush at shutdown
    if in_flight:
        finish("ok")

    assert stored == h.users
    assert counted == counts(h.users)
    assert (h.status()["pending"], h.status()["flushing"]) == (0, 0)


# -- the PostgreSQL writer --------------------------------------------------------------------


@pytest.mark.postgres
def test_a_replayed_or_overlapping_batch_counts_each_user_once(schema: str) -> None:
    first = {"/a": {"1", "2"}, "/b": {"1"}}
    assert handlers.write_batch(DSN, schema, first).new_pairs == 3
    replay = handlers.write_batch(DSN, schema, first)
    assert (replay.pairs, replay.new_pairs, replay.urls) == (3, 0, 0)
    overlapping = {"/a": {"2", "3"}, "/c": {"9"}}
    assert handlers.write_batch(DSN, schema, overlapping).new_pairs == 2

    assert pg_counts(schema) == {"/a": 3, "/b": 1, "/c": 1}
    assert pg_pairs_per_url(schema) == {"/a": 3, "/b": 1, "/c": 1}
    assert [new for _, _, new in pg_flushes(schema)] == [3, 0, 2]


@pytest.mark.postgres
def test_concurrent_overlapping_flushes_neither_deadlock_nor_count_twice(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several statements per flush, so that transactions interleave within one flush too.
    monkeypatch.setattr(handlers, "PAIRS_PER_STATEMENT", 2_000)
    # Rounds of 4 servers' batches of 8,000 clicks over 20 x 1,000 possible pairs: much overlap.
    rounds = [
        [generate.unique_pairs(seed, 8_000, 1, 20, 1_000, 0.5) for seed in range(i, i + 4)]
        for i in range(0, 12, 4)
    ]
    truth = union(*(batch for batches in rounds for batch in batches))

    def flush_all(batches: list[dict[str, set[str]]]) -> list[Any]:
        with ThreadPoolExecutor(len(batches)) as pool:
            return list(pool.map(lambda b: handlers.write_batch(DSN, schema, b), batches))

    # The first round also races to create the tables (and takes turns to do it); the next
    # ones find them and run truly concurrently.
    results = [result for batches in rounds for result in flush_all(batches)]

    assert sum(r.new_pairs for r in results) == sum(counts(truth).values())
    assert sum(r.pairs for r in results) > sum(counts(truth).values())
    assert pg_counts(schema) == counts(truth)
    assert pg_pairs_per_url(schema) == counts(truth)


@pytest.mark.postgres
def test_a_flush_whose_commit_ack_is_lost_is_replayed_without_counting_twice(
    schema: str, proxy: PostgresProxy
) -> None:
    truth = clicks_of(seed=1, events=3_000)
    h = make_handler(dsn=proxy.dsn, schema=schema, timeout=5)
    h.on_events(as_events(truth))

    proxy.lose_commit_acks = True
    error = run_job(h.flush())
    assert isinstance(error, psycopg.OperationalError)
    assert proxy.acks_lost == 1
    assert pg_counts(schema) == counts(truth)  # committed, though the flush saw a failure
    assert h.status()["pending"] == sum(counts(truth).values())  # so it is kept to retry

    proxy.lose_commit_acks = False
    result = run_job(h.flush())
    assert isinstance(result, handlers.FlushResult)
    assert (result.pairs, result.new_pairs) == (sum(counts(truth).values()), 0)
    assert pg_counts(schema) == counts(truth)
    assert pg_pairs_per_url(schema) == counts(truth)


@pytest.mark.postgres
def test_an_outage_mid_flush_writes_nothing_and_the_pairs_are_written_when_it_ends(
    schema: str, proxy: PostgresProxy
) -> None:
    first = clicks_of(seed=1, events=3_000)
    h = make_handler(dsn=proxy.dsn, schema=schema, timeout=5)
    h.on_events(as_events(first))

    # The flush has sent all its rows and waits on its COMMIT when PostgreSQL goes away.
    proxy.hold_commits = True
    job = h.flush()
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(run_job(job)))
    worker.start()
    assert proxy.commit_held.wait(10)
    proxy.down()
    worker.join(10)
    assert isinstance(outcome[0], psycopg.OperationalError)
    assert pg_counts(schema) == {}  # rolled back, tables and all

    # Down: connections refused. Clicks go on; the flushes fail fast and keep everything.
    second = clicks_of(seed=2, events=3_000)
    h.on_events(as_events(second))
    started = time.monotonic()
    assert isinstance(run_job(h.flush()), psycopg.OperationalError)
    assert time.monotonic() - started < 3
    assert h.status()["pending"] == sum(counts(union(first, second)).values())

    proxy.release_commits()
    proxy.up()
    result = run_job(h.flush())
    assert isinstance(result, handlers.FlushResult)
    assert pg_counts(schema) == counts(union(first, second))
    assert pg_pairs_per_url(schema) == counts(union(first, second))
    assert h.status()["pending"] == 0


# -- through real bucketlyd servers -----------------------------------------------------------


def run_generator(servers: list[RunningServer], *args: str) -> dict[str, Any]:
    command = [sys.executable, str(GENERATE), "--json"]
    for server in servers:
        command += ["--server", f"{server.host}:{server.port}"]
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.postgres
@pytest.mark.parametrize(("servers", "partitioned"), [(1, False), (2, False), (2, True)])
def test_a_generator_run_reaches_postgresql_exactly(
    tmp_path: Path, schema: str, servers: int, partitioned: bool
) -> None:
    truth_file = tmp_path / "truth.json"
    with contextlib.ExitStack() as stack:
        running = [
            stack.enter_context(run_server(HANDLERS, tmp_path / f"server{i}.dat"))
            for i in range(servers)
        ]
        summary = run_generator(
            running,
            *("--events", "40000", "--processes", "4", "--urls", "200", "--users", "3000"),
            *("--zipf", "1.1", "--seed", "7", "--ground-truth", str(truth_file)),
            *("--dsn", DSN, "--schema", schema, "--flush-seconds", "0.2"),
            *(("--partitioned",) if partitioned else ()),
        )
        assert summary["events"] == 40_000
        truth = json.loads(truth_file.read_text())
        expected: dict[str, int] = truth["urls"]
        wait_for(lambda: pg_counts(schema) == expected, "PostgreSQL to hold the ground truth")
        assert pg_pairs_per_url(schema) == expected

        clients = [stack.enter_context(server.client()) for server in running]
        for client in clients:
            assert flush_stats(client)["failures"] == 0
        flushes = pg_flushes(schema)
        assert len({source for source, _, _ in flushes}) == servers
        assert sum(new for _, _, new in flushes) == truth["pairs"]
        if partitioned:
            # Each url on one server: no pair seen, or written, twice; merged views exact.
            a, b = (client.dump("clicks") for client in clients)
            assert not set(a) & set(b) and a and b
            assert sum(pairs for _, pairs, _ in flushes) == truth["pairs"]
            addresses = [f"{server.host}:{server.port}" for server in running]
            with bucketly.Client(servers=addresses, user="admin", password="admin") as both:
                top = both.view("clicks", "top", n=5)
                assert [n for _, n in top] == sorted(expected.values(), reverse=True)[:5]
                assert {url: both.view("clicks", "count", url=url) for url in expected} == expected
                assert {url: len(u) for url, u in both.dump("clicks").items()} == expected
                status = both.view("clicks", "status")  # the handler's merge_status
                assert status["pairs"] == truth["pairs"] and len(status["last_flushes"]) == 2
        elif servers == 2:
            # Both servers saw some of the same (url, user) pairs and both flushed them.
            a, b = (client.dump("clicks") for client in clients)
            shared = sum(len(set(a[url]) & set(b.get(url, ()))) for url in a)
            assert shared > 0
            assert sum(pairs for _, pairs, _ in flushes) == truth["pairs"] + shared


@pytest.mark.postgres
def test_a_postgresql_outage_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, schema: str, proxy: PostgresProxy
) -> None:
    config = {"dsn": proxy.dsn, "schema": schema, "flush_seconds": 0.1, "timeout": 5}
    with run_server(HANDLERS, tmp_path / "db.dat") as server, server.client() as client:
        client.create_bucket("clicks", "UniqueClicks", config=config, durable=False)
        first = send_clicks(client, seed=1, events=5_000)
        assert_postgres_holds(schema, first)

        proxy.down()
        second = send_clicks(client, seed=2, events=5_000)
        everything = union(first, second)
        wait_for(lambda: flush_stats(client)["consecutive_failures"] >= 5, "failed flushes")
        # Ingestion went on: the bucket counts everything, and keeps what is not written.
        assert client.view("clicks", "status")["pairs"] == sum(counts(everything).values())
        assert client.view("clicks", "status")["pending"] > 0
        assert pg_counts(schema) == counts(first)
        stats = flush_stats(client)
        assert "connect" in stats["last_error"].lower()
        # Reported without flooding: the server logs the first failure, not every one.
        failure_lines = [line for line in server.logs if "job clicks.flush failed" in line]
        assert 1 <= len(failure_lines) < stats["consecutive_failures"]

        proxy.up()
        assert_postgres_holds(schema, everything)
        wait_for(lambda: flush_stats(client)["consecutive_failures"] == 0, "a good flush")
        server.wait_for_log("job clicks.flush recovered")


@pytest.mark.postgres
def test_a_slow_flush_never_blocks_ingestion(
    tmp_path: Path, schema: str, proxy: PostgresProxy
) -> None:
    config = {"dsn": proxy.dsn, "schema": schema, "flush_seconds": 0.1, "timeout": 30}
    with (
        run_server(HANDLERS, tmp_path / "db.dat") as server,
        server.client(timeout=5) as client,
        contextlib.ExitStack() as cleanup,
    ):
        # Whatever happens, let the stuck flush finish before the server stops.
        cleanup.callback(proxy.release_commits)
        client.create_bucket("clicks", "UniqueClicks", config=config, durable=False)
        # Never flushes (and its flush at shutdown finds no PostgreSQL there).
        nowhere = {"dsn": "postgresql://postgres@127.0.0.1:1/test", "timeout": 1}
        client.create_bucket("idle", "UniqueClicks", config={"flush_seconds": 3600, **nowhere})
        clicks = [chunk for chunk in generate.clicks(2, 0, 50_000, 100, 400, 1.0)]

        # How fast the server takes these clicks with no flush running anywhere.
        started = time.monotonic()
        for chunk in clicks:
            client.send_many("idle", chunk)
        client.flush()
        unhindered = time.monotonic() - started

        proxy.hold_commits = True
        first = send_clicks(client, seed=1, events=2_000)
        assert proxy.commit_held.wait(10)
        assert flush_stats(client)["running"]

        started = time.monotonic()
        for chunk in clicks:
            client.send_many("clicks", chunk)
        client.flush()  # every click acknowledged...
        during_flush = time.monotonic() - started
        assert flush_stats(client)["running"]  # ...while the flush is still stuck
        second = clicks_of(seed=2, events=50_000)
        everything = union(first, second)
        assert client.view("clicks", "status")["pairs"] == sum(counts(everything).values())
        assert during_flush < 3 * unhindered + 0.5, (during_flush, unhindered)

        proxy.release_commits()
        assert_postgres_holds(schema, everything)
        flushes = pg_flushes(schema)
        # The stuck flush wrote the first clicks only; the ones sent meanwhile came next.
        assert flushes[0][1] == sum(counts(first).values())
        assert sum(new for _, _, new in flushes) == sum(counts(everything).values())
        assert flush_stats(client)["failures"] == 0
