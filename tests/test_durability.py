"""Durable buckets against a real bucketlyd: kill -9, fault injection, disk full, damage, resends.

The ground truth is the ``Ledger`` handler (tests/durable_handlers.py), which keeps every event in
the order applied: "no acknowledged event missing, none counted twice, the recovered state equals
the state of the acknowledged events" is then a comparison of lists.
"""

from __future__ import annotations

import collections
import copy
import os
import random
import resource
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.buckets.faults import FAULT_ENV, FAULT_EXIT_STATUS, FAULT_POINTS
from bucketly.buckets.snapshot_codec import pack_state, unpack_state
from bucketly.testing import RunningServer, bucketlyd_command
from bucketly.unique import UNIQUE_INDEX_TYPES, UniqueIndex

from .conftest import AsyncProxy, RawConnection

HERE = Path(__file__).parent
HANDLERS = HERE / "durable_handlers.py"


def start(db: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None
          ) -> RunningServer:
    server = RunningServer(
        bucketlyd_command(db, HANDLERS, port, list(extra)),
        env=None if env is None else {**os.environ, **env},
    )
    server.wait_ready()
    return server


def run_to_exit(db: Path, *extra: str, timeout: float = 30) -> tuple[int, str]:
    """Start a bucketlyd that must fail to start; its exit status and log."""
    server = RunningServer(bucketlyd_command(db, HANDLERS, 0, list(extra)))
    code = server.process.wait(timeout)
    server.kill()  # joins the log reader
    return code, "\n".join(server.logs)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "db.dat"


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    """Servers a test starts; killed at the end whatever happened."""
    started: list[RunningServer] = []
    yield started
    for server in started:
        server.kill()


def ledger(server: RunningServer, bucket: str = "d") -> list[Any]:
    with server.client() as client:
        return list(client.view(bucket, "all"))


# -- the snapshot encoding ----------------------------------------------------------------------


def test_snapshot_encoding_gives_plain_data_back_with_its_types() -> None:
    state = {
        "set": {1, "a", (2, 3)},
        "frozen": frozenset({b"x"}),
        ("tuple", "key"): [(1, (2,)), {"nested": {4}}],
        "big": 2**100,
        "negative_big": -(2**80),
        "counter": collections.Counter({"a": 3}),
        "by_key": collections.defaultdict(set, {"k": {1}}),
        "deque": collections.deque([1, 2], maxlen=5),
        "plain": {"n": None, "f": 1.5, "b": True, 7: "int key"},
    }
    back = unpack_state(pack_state(state))
    assert back == state
    for key, value in state.items():
        assert type(back[key]) is type(value), key
    assert back["by_key"].default_factory is set
    assert back["deque"].maxlen == 5
    assert type(next(iter(back["set"] - {1, "a"}))) is tuple


@pytest.mark.parametrize("impl", UNIQUE_INDEX_TYPES, ids=lambda cls: cls.__name__)
def test_snapshot_encoding_keeps_a_unique_index(impl: Any) -> None:
    index = impl()
    index.add_events([{"u": f"/p{i % 7}", "v": i % 11} for i in range(100)], "u", "v")
    index.add(("tuple", 1), 2**70)
    back = unpack_state(pack_state({"users": index, "copy": copy.copy(index)}))
    for restored in back.values():
        assert isinstance(restored, UniqueIndex)  # native or not, as this process runs
        assert len(restored) == len(index) == 78
        assert {k: set(v) for k, v in restored.items().items()} == {
            k: set(v) for k, v in index.items().items()}
    index.add("late", 1)
    assert back["copy"].count("late") == 0  # the default snapshot's copy is independent


@pytest.mark.parametrize("value", [object(), collections.defaultdict(lambda: 0)])
def test_snapshot_encoding_refuses_what_is_not_plain_data(value: Any) -> None:
    with pytest.raises(TypeError):
        pack_state({"x": value})


def test_a_bucket_remembers_a_silent_producer_for_one_to_two_retention_periods() -> None:
    from bucketly.buckets import Bucket
    from bucketly.handlers import load_handlers
    from bucketly.store import BucketRow

    info = load_handlers(str(HANDLERS))["Ledger"]
    bucket = Bucket(BucketRow("b", "Ledger", {}, "memory", 0.0), info)
    assert bucket.accept("p", 1)
    assert not bucket.accept("p", 1) and bucket.seen("p", 0) and not bucket.seen("p", 2)
    bucket.rotate_producers(1.0)
    assert bucket.seen("p", 1)  # silent for one period: still known
    assert bucket.accept("q", 5)
    assert bucket.producer_table() == {"p": 1, "q": 5}
    bucket.rotate_producers(2.0)
    assert not bucket.seen("p", 1) and bucket.seen("q", 5)  # p was silent for two


# -- the basics -----------------------------------------------------------------------------------


def test_acknowledged_events_survive_kill_9_and_restarts(db: Path, servers: list) -> None:
    servers.append(server := start(db, "--snapshot-events", "250"))
    with server.client(batch_size=40) as client:
        info = client.create_bucket("d", "Ledger", durable=True)
        assert info["durable"] is True
        client.create_bucket("n", "Ledger")
        for i in range(1000):
            client.send("d", i)
            client.send("n", i)  # interleaved with a non-durable bucket: one batch each time
        client.flush()
        durability = client.bucket_info("d")["durability"]
        assert durability["snapshots"] >= 3, durability
        assert durability["log_events"] <= 250  # (a snapshot may be queued right now)
        assert client.bucket_info("n")["durability"] is None
    server.kill()
    servers.append(server := start(db))
    assert ledger(server) == list(range(1000))
    assert ledger(server, "n") == []  # not durable: starts empty
    assert any("recovered durable bucket 'd': snapshot at record" in line
               for line in server.logs)
    assert server.stop() == 0  # a graceful stop snapshots: the next start replays nothing
    servers.append(server := start(db))
    assert ledger(server) == list(range(1000))
    with server.client() as client:
        assert client.bucket_info("d")["durability"]["log_records"] == 0
        assert client.stats()["durable_log"]["commits"] == 0


def test_the_default_snapshot_restores_sets_tuples_and_the_like(db: Path, servers: list) -> None:
    servers.append(server := start(db, "--snapshot-events", "5"))
    events = [{"k": f"k{i % 3}", "v": i % 7} for i in range(40)]
    with server.client(batch_size=10) as client:
        client.create_bucket("s", "Shapes", durable=True)
        for event in events:
            client.send("s", event)
        client.flush()
        before = client.view("s", "shapes")
        assert client.bucket_info("s")["durability"]["snapshot_error"] is None
    assert server.stop() == 0
    servers.append(server := start(db))
    with server.client() as client:
        assert client.view("s", "shapes") == before
        assert client.bucket_info("s")["durability"]["log_records"] == 0  # from the snapshot


def test_a_state_that_cannot_be_snapshotted_keeps_its_whole_log(db: Path, servers: list) -> None:
    servers.append(server := start(db, "--snapshot-events", "3"))
    with server.client(batch_size=2) as client:
        client.create_bucket("o", "Opaque", durable=True)
        for i in range(20):
            client.send("o", i)
        client.flush()
        durability = client.bucket_info("o")["durability"]
        assert "plain data" in durability["snapshot_error"]
        assert durability["log_events"] == 20
    assert server.stop() == 0
    assert any("cannot snapshot" in line for line in server.logs)
    servers.append(server := start(db))
    with server.client() as client:
        assert client.view("o", "total") == sum(range(20))


def test_handler_errors_replay_the_same_way(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("p", "Picky", durable=True)
        client.send_many("p", ["a", "boom", "b"])
        with pytest.raises(bucketly.HandlerError) as caught:
            client.flush()
        assert caught.value.detail["applied"] == 1
        client.send("p", "c")
        client.flush()
        assert client.view("p", "all") == ["a", "c"]
    server.kill()
    servers.append(server := start(db))
    with server.client() as client:
        assert client.view("p", "all") == ["a", "c"]


def test_fire_and_forget_sends_to_a_durable_bucket(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=True)
    raw = RawConnection(server.host, server.port)
    try:
        raw.auth()
        for i in range(10):
            raw.request(i, "send", bucket="d", event=i, ack=False)
        raw.request(10, "send", bucket="nope", event=0, ack=False)
        raw.request(11, "ping")  # not a send: waits until every send before it is applied
        failed = raw.read()  # only the failed send is answered, before the ping
        assert (failed.id, failed.code) == (10, "unknown_bucket")
        assert raw.read().id == 11
    finally:
        raw.close()
    assert ledger(server) == list(range(10))


def test_single_events_and_batches_both_replay_after_kill_9(db: Path, servers: list) -> None:
    """A batch is logged as the send frame it came in, a single ``event`` as an array of one:
    recovery reads both, in order, whatever else the frame carried."""
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=True)
    raw = RawConnection(server.host, server.port)
    try:
        raw.auth()
        raw.request(1, "send", bucket="d", event={"n": 0})
        raw.request(2, "send", bucket="d", events=[{"n": 1}, [2, "two"]], producer="p", seq=1)
        raw.request(3, "send", bucket="d", event=3, ack=True)
        raw.request(4, "send", bucket="d", events=[], ack=True)
        raw.request(5, "send", bucket="d", events=[None, {"n": 5}])
        assert [raw.read().result["accepted"] for _ in range(5)] == [1, 2, 1, 0, 2]
    finally:
        raw.close()
    server.kill()
    servers.append(server := start(db))
    assert ledger(server) == [{"n": 0}, {"n": 1}, [2, "two"], 3, None, {"n": 5}]


def test_pipelined_durable_sends_keep_order_and_a_view_sees_them(db: Path, servers: list) -> None:
    from bucketly.protocol import encode_request

    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=True)
        client.create_bucket("n", "Ledger")
    raw = RawConnection(server.host, server.port)
    try:
        raw.auth()
        frames = []
        for i in range(100):
            frames.append(encode_request(i, "send", {"bucket": "d", "events": [i]}))
            if i == 50:
                frames.append(encode_request(1000, "view", {"bucket": "d", "view": "count"}))
                frames.append(encode_request(1001, "send", {"bucket": "n", "event": i}))
                frames.append(encode_request(1002, "send", {"bucket": "x", "event": i}))
        frames.append(encode_request(2000, "view", {"bucket": "d", "view": "all"}))
        raw.send_bytes(b"".join(frames))
        replies = [raw.read() for _ in range(104)]
        expected_ids = [*range(51), 1000, 1001, 1002, *range(51, 100), 2000]
        assert [r.id for r in replies] == expected_ids
        by_id = {r.id: r for r in replies}
        assert by_id[1000].result == 51
        assert by_id[1002].code == "unknown_bucket"
        assert by_id[2000].result == list(range(100))
        assert by_id[7].result == {"accepted": 1}
    finally:
        raw.close()


def test_sends_from_many_connections_share_one_commit(db: Path, servers: list) -> None:
    from bucketly.protocol import encode_request

    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=True)
    connections = [RawConnection(server.host, server.port) for _ in range(6)]
    try:
        for raw in connections:
            raw.auth()
        for k, raw in enumerate(connections):
            raw.send_bytes(b"".join(
                encode_request(i, "send", {"bucket": "d", "events": [k * 100 + i]})
                for i in range(30)
            ))
        for raw in connections:
            assert [raw.read().id for _ in range(30)] == list(range(30))
    finally:
        for raw in connections:
            raw.close()
    with server.client() as client:
        stats = client.stats()["durable_log"]
    assert stats["records"] == 180
    assert stats["commits"] <= 90, stats  # group commit: many records per disk flush
    assert sorted(ledger(server)) == sorted(k * 100 + i for k in range(6) for i in range(30))


# -- resends -------------------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_a_resent_batch_is_acknowledged_and_not_applied_twice(
    db: Path, servers: list, durable: bool
) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=durable)
    raw = RawConnection(server.host, server.port)
    try:
        raw.auth()
        send = {"bucket": "d", "producer": "p1"}
        assert raw.call(1, "send", events=["a"], seq=5, **send).result == {"accepted": 1}
        assert raw.call(2, "send", events=["a"], seq=5, **send).result == {
            "accepted": 1, "duplicate": True}
        assert raw.call(3, "send", events=["old"], seq=4, **send).result["duplicate"] is True
        assert raw.call(4, "send", events=["b"], seq=6, **send).result == {"accepted": 1}
        other = {"bucket": "d", "producer": "p2", "seq": 5}
        assert raw.call(5, "send", events=["c"], **other).result == {"accepted": 1}
        for bad in ({"producer": "p"}, {"seq": 1}, {"producer": "", "seq": 1},
                    {"producer": "p", "seq": -1}, {"producer": "x" * 65, "seq": 1},
                    {"producer": 7, "seq": 1}, {"producer": "p", "seq": True}):
            reply = raw.call(6, "send", bucket="d", event="z", **bad)
            assert reply.code == "bad_argument", bad
    finally:
        raw.close()
    assert ledger(server) == ["a", "b", "c"]
    if durable:
        server.kill()
        servers.append(server := start(db))
        raw = RawConnection(server.host, server.port)
        try:
            raw.auth()
            reply = raw.call(1, "send", bucket="d", events=["b"], producer="p1", seq=6)
            assert reply.result["duplicate"] is True  # remembered through the crash
            assert raw.call(2, "send", bucket="d", events=["d"], producer="p1", seq=7).result == {
                "accepted": 1}
        finally:
            raw.close()
        assert ledger(server) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_clients_resend_what_was_in_flight_when_the_server_died(
    db: Path, servers: list, kind: str
) -> None:
    servers.append(server := start(db, "--snapshot-events", "100"))
    port = server.port
    with server.client() as admin:
        admin.create_bucket("d", "Ledger", durable=True)
    options = {"user": "admin", "password": "admin", "batch_size": 7, "max_in_flight": 1000}
    client: Any = (
        bucketly.Client(server.host, port, **options) if kind == "sync"
        else AsyncProxy(server.host, port, **options)
    )
    try:
        acked: list[int] = []
        client.send_many("d", list(range(100)))
        client.flush()
        acked += range(100)
        # Batches written but not acknowledged when the server dies: some were applied.
        client.send_many("d", list(range(100, 400)))
        server.kill()
        with pytest.raises(bucketly.BucketlyConnectionError):
            client.flush()
        servers.append(server := start(db, port=port))
        recovered = ledger(server)
        assert recovered[:100] == acked
        client.flush()  # reconnects, resends; the server recognises what it had applied
        assert ledger(server) == list(range(400))
    finally:
        client.close()


def test_close_hands_back_what_it_could_not_deliver(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as admin:
        admin.create_bucket("d", "Ledger", durable=True)
    client = server.client(batch_size=5, max_in_flight=100)
    client.send_many("d", list(range(12)))
    server.kill()
    with pytest.raises(bucketly.ConnectionLost) as caught:
        client.close()
    returned = {e for _, events in caught.value.unacknowledged for e in events}
    assert {10, 11} <= returned  # still buffered: never written
    servers.append(server := start(db))
    applied = set(ledger(server))
    # Every event is accounted for: applied (acknowledged or not), or handed back.
    assert applied | returned == set(range(12))
    assert set(range(12)) - returned <= applied


# -- crashes at every step ---------------------------------------------------------------------


class Sender:
    """A client in its own thread sending numbered events until its server dies.

    ``acked`` holds the events of every flush that succeeded; ``pending`` the chunk being sent
    when the connection broke (kept by the client, resent by its next flush).
    """

    def __init__(self, number: int, host: str, port: int, rng: random.Random) -> None:
        self.number = number
        self.client = bucketly.Client(
            host, port, user="admin", password="admin", batch_size=rng.randint(3, 15),
            linger=0.005, max_in_flight=rng.randint(1, 8), timeout=10,
        )
        self.rng = random.Random(rng.random())
        self.next = 0
        self.acked: list[int] = []
        self.pending: list[int] = []
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def resend(self) -> None:
        self.client.flush()
        self.acked += self.pending
        self.pending = []

    def start(self) -> None:
        self.stop.clear()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                n = self.rng.randint(1, 40)
                base = self.number * 10**9 + self.next
                self.pending = list(range(base, base + n))
                self.next += n
                self.client.send_many("d", self.pending)
                self.client.flush()
                self.acked += self.pending
                self.pending = []
        except bucketly.BucketlyError:
            pass  # the server died: what is pending is resent on the next cycle

    def join(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive()


def check_recovered(state: list[int], senders: list[Sender]) -> None:
    """No acknowledged event missing, none twice, nothing that was not sent; each sender's
    events in the order it sent them."""
    counts = collections.Counter(state)
    doubled = [e for e, n in counts.items() if n > 1]
    assert not doubled, f"counted twice: {doubled[:10]}"
    acked = {e for s in senders for e in s.acked}
    sent = acked | {e for s in senders for e in s.pending}
    assert not acked - counts.keys(), f"acknowledged but lost: {sorted(acked - counts.keys())[:10]}"
    assert counts.keys() <= sent, "applied but never sent"
    for s in senders:
        mine = [e for e in state if e // 10**9 == s.number]
        assert mine == sorted(mine), "a sender's events out of order"


KILL_CYCLES = 50


@pytest.mark.slow
def test_kill_9_loop_loses_and_doubles_nothing(db: Path, servers: list) -> None:
    """Several clients send numbered events to a durable bucket; the daemon is killed at random
    moments (SIGKILL) and restarted on the same file, KILL_CYCLES times. Snapshots and compaction
    run all along (--snapshot-events 150), so kills land in them too."""
    rng = random.Random(int(os.environ.get("BUCKETLY_KILL_SEED", "4")))
    args = ("--snapshot-events", "150", "--snapshot-seconds", "0.2")
    servers.append(server := start(db, *args))
    with server.client() as admin:
        admin.create_bucket("d", "Ledger", durable=True)
    senders = [Sender(k, server.host, server.port, rng) for k in range(3)]
    kills = {"early": 0, "late": 0}
    #: Events applied (committed) whose acknowledgement the kill cut off: their resend must be
    #: recognised, or they would be counted twice.
    applied_unacknowledged = 0
    try:
        for cycle in range(KILL_CYCLES):
            for sender in senders:
                sender.start()
            # Kill at once, or after a random number of acknowledged chunks.
            target = rng.choice([0, 0, 1, 3, 10, 30])
            deadline = time.monotonic() + 5
            while (sum(len(s.acked) for s in senders) < target * 20
                   and time.monotonic() < deadline):
                time.sleep(0.001)
            time.sleep(rng.random() * 0.02)
            server.kill()
            kills["early" if target == 0 else "late"] += 1
            for sender in senders:
                sender.join()
            servers.append(server := start(db, *args, port=server.port))
            state = ledger(server)
            check_recovered(state, senders)
            applied_unacknowledged += len({e for s in senders for e in s.pending} & set(state))
            for sender in senders:
                sender.client.port = server.port
                sender.resend()  # the clients resend what they had in flight
            state = ledger(server)
            assert sorted(state) == sorted(e for s in senders for e in s.acked), cycle
            check_recovered(state, senders)
        assert sum(len(s.acked) for s in senders) > KILL_CYCLES * 10
        assert applied_unacknowledged > 0, "no kill landed between commit and acknowledgement"
        assert kills["early"] and kills["late"]
    finally:
        for sender in senders:
            sender.join()
            try:
                sender.client.close()
            except bucketly.BucketlyError:
                pass


def _send_until_the_server_dies(server: RunningServer, sender: Sender) -> None:
    sender.start()
    code = server.process.wait(60)
    sender.join()
    assert code == FAULT_EXIT_STATUS, "\n".join(server.logs[-20:])


# The snapshot level's point is tests/test_snapshots.py's: a durable bucket never reaches it.
@pytest.mark.parametrize("point", sorted(p for p in FAULT_POINTS if p.startswith(("commit.",
                                                                                 "snapshot."))))
def test_a_crash_at_each_step_of_commit_snapshot_and_compaction_recovers(
    db: Path, servers: list, point: str
) -> None:
    args = ("--snapshot-events", "60")
    servers.append(server := start(db, *args, env={FAULT_ENV: f"{point}@3"}))
    with server.client() as admin:
        admin.create_bucket("d", "Ledger", durable=True)
    sender = Sender(1, server.host, server.port, random.Random(point))
    _send_until_the_server_dies(server, sender)
    assert any(f"fault injection: exiting at {point}" in line for line in server.logs)
    servers.append(server := start(db, *args))
    check_recovered(ledger(server), [sender])
    with server.client() as client:
        durability = client.bucket_info("d")["durability"]
    if point == "snapshot.after_commit":
        assert durability["snapshot_record"] > 0  # the snapshot it crashed after is there
    elif point.startswith("snapshot."):
        # Two snapshots made it, the third was rolled back whole: snapshot and log agree.
        assert durability["snapshot_record"] > 0
    sender.client.port = server.port
    sender.resend()
    assert sorted(ledger(server)) == sender.acked
    sender.client.close()


# -- disk full -------------------------------------------------------------------------------------


def _fill_until_refused(client: Any, start_at: int) -> tuple[list[int], list[int]]:
    """Send chunks until one is refused with storage_error: (acknowledged, refused)."""
    acked: list[int] = []
    for k in range(start_at, start_at + 10_000, 50):
        chunk = list(range(k, k + 50))
        client.send_many("d", chunk)
        try:
            client.flush()
        except bucketly.StorageError as exc:
            assert "could not be written" in exc.message and "not applied" in exc.message
            return acked, chunk
        acked += chunk
    raise AssertionError("the disk never filled up")


def test_a_file_size_limit_refuses_durable_sends_only_and_then_recovers(
    db: Path, servers: list
) -> None:
    """RLIMIT_FSIZE on the running daemon (prlimit): writes fail with EFBIG, as on a full disk."""
    if not hasattr(resource, "prlimit"):
        pytest.skip("needs resource.prlimit (Linux)")
    servers.append(server := start(db))
    with server.client(batch_size=50) as client:
        client.create_bucket("d", "Ledger", durable=True)
        client.create_bucket("n", "Ledger")
        client.send_many("d", list(range(100)))
        client.flush()
        soft, hard = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (1024, hard))
        try:
            acked, refused = _fill_until_refused(client, 100)
            client.send_many("n", ["still works"])  # non-durable buckets keep working
            client.flush()
            assert client.view("n", "all") == ["still works"]
            assert client.view("d", "count") == 100 + len(acked)  # the refused: not applied
            stats = client.stats()["durable_log"]
            assert stats["failed_commits"] >= 1 and stats["last_error"]
        finally:
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (soft, hard))
        client.send_many("d", ["after"])  # room again: durable sends work again
        client.flush()
    assert server.returncode is None
    assert any("durable log: could not write" in line for line in server.logs)
    server.kill()
    servers.append(server := start(db))
    assert ledger(server) == [*range(100), *acked, "after"]  # nothing refused came back
    assert not set(refused) & set(acked)


# -- configuration ---------------------------------------------------------------------------------


def test_durability_can_be_switched_on_and_off(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("b", "Ledger")
        client.send_many("b", ["before"])
        info = client.configure_bucket("b", durable=True)
        assert info["durable"] is True
        client.send_many("b", ["after"])
        client.flush()
        assert client.bucket_info("b")["durable"] is True
    server.kill()
    servers.append(server := start(db))
    assert ledger(server, "b") == ["before", "after"]  # the state when switched on was kept
    with server.client() as client:
        assert client.configure_bucket("b", durable=False)["durable"] is False
        assert client.bucket_info("b")["durability"] is None
        client.send("b", "lost")
        client.flush()
    server.kill()
    servers.append(server := start(db))
    assert ledger(server, "b") == []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM durable_log").fetchone()[0]
        rows += conn.execute("SELECT count(*) FROM durable_snapshots").fetchone()[0]
    conn.close()
    assert rows == 0


def test_configure_needs_the_configure_permission(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("b", "Ledger")
        if not hasattr(client, "create_user"):
            pytest.skip("no user management in this build")
        client.create_user("carol", "carol-secret")
        client.grant("carol", "view", "b")
    with server.client(user="carol", password="carol-secret") as carol:
        with pytest.raises(bucketly.PermissionDenied):
            carol.configure_bucket("b", durable=True)


def test_a_deleted_durable_bucket_comes_back_empty(db: Path, servers: list) -> None:
    servers.append(server := start(db))
    with server.client() as client:
        client.create_bucket("d", "Ledger", durable=True)
        client.send_many("d", [1, 2, 3])
        client.delete_bucket("d")
        client.create_bucket("d", "Ledger", durable=True)
        client.send("d", 4)
        client.flush()
    server.kill()
    servers.append(server := start(db))
    assert ledger(server) == [4]


def test_unique_count_restores_a_snapshot_of_its_dict_of_sets_days() -> None:
    from bucketly.builtin_handlers import UniqueCount

    handler = UniqueCount({"key": "url", "value": "user"})
    handler.restore(unpack_state(pack_state(
        {"key": "url", "value": "user", "seen": {"/a": {"ann", "bob"}, "/b": {"ann"}}})))
    assert isinstance(handler.seen, UniqueIndex)
    handler.on_events([{"url": "/a", "user": "cy"}, {"url": "/b", "user": "ann"}])
    assert (handler.count("/a"), handler.count("/b")) == (3, 1)
