"""What the daemon promises: serialization, ordering, persistence, orderly shutdown."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import bucketly
from bucketly.testing import RunningServer, bucketlyd_command, run_server

from .conftest import TEST_HANDLERS, Sink


def test_many_connections_and_threads_see_a_serial_order(server: RunningServer) -> None:
    """8 connections x 4 threads hammer one bucket; the handler sees each stream in order."""
    with server.client() as admin:
        admin.create_bucket("b", "Recorder")
    per_stream = 3000
    errors: list[BaseException] = []

    def produce(client: bucketly.Client, stream: int) -> None:
        try:
            for i in range(per_stream):
                client.send("b", [stream, i])
            client.flush()
        except BaseException as exc:
            errors.append(exc)

    clients = [server.client(batch_size=97) for _ in range(8)]  # odd batches interleave more
    threads = [threading.Thread(target=produce, args=(clients[n % 8], n)) for n in range(8 * 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with server.client() as admin:
        events = admin.view("b", "all")
        health = admin.view("b", "health")
    for client in clients:
        client.close()
    assert len(events) == 32 * per_stream
    # Each (thread) stream arrives in the order it was sent, whatever the interleaving.
    seen: dict[int, int] = {}
    for stream, i in events:
        assert seen.get(stream, -1) == i - 1, f"stream {stream}: {i} after {seen.get(stream)}"
        seen[stream] = i
    assert health == {"overlaps": 0, "threads": 1}


def test_order_within_a_connection_across_buckets(server: RunningServer) -> None:
    with server.client() as client:
        client.create_bucket("a", "Recorder")
        client.create_bucket("b", "Recorder")
        for i in range(200):
            client.send("a" if i % 3 else "b", i)
        # A view on "b" sees every send before it, including those to "a" queued earlier.
        assert client.view("a", "all") == [i for i in range(200) if i % 3]
        assert client.view("b", "all") == [i for i in range(200) if not i % 3]


def test_bucket_definitions_survive_a_restart_but_state_does_not(tmp_path: Path) -> None:
    db = tmp_path / "db.dat"
    with run_server(handlers=TEST_HANDLERS, database=db) as server:
        with server.client() as client:
            client.create_bucket("kept", "Recorder", config={"x": 1})
            client.send("kept", "lost on restart")
            client.flush()
            assert client.view("kept", "count") == 1
    with run_server(handlers=TEST_HANDLERS, database=db) as server:
        with server.client() as client:
            (info,) = client.buckets()
            assert (info["name"], info["handler"], info["config"]) == ("kept", "Recorder", {"x": 1})
            assert client.view("kept", "count") == 0


def test_a_bucket_whose_handler_disappeared_is_reported_not_fatal(tmp_path: Path) -> None:
    db = tmp_path / "db.dat"
    with run_server(handlers=TEST_HANDLERS, database=db) as server:
        with server.client() as client:
            client.create_bucket("orphan", "Recorder")
    other = tmp_path / "other.py"
    other.write_text(
        "import bucketly\nclass Other(bucketly.Handler):\n    def on_event(self, e): pass\n"
    )
    with run_server(handlers=other, database=db) as server:
        server.wait_for_log("bucket 'orphan' is unavailable")
        with server.client() as client:
            (info,) = client.buckets()
            assert "no longer defines" in info["broken"]
            try:
                client.view("orphan", "count")
            except bucketly.UnknownHandler as exc:
                assert "Recorder" in str(exc)
            else:
                raise AssertionError("a view on a broken bucket must fail")
            client.delete_bucket("orphan")  # and it can be cleaned up
            assert client.buckets() == []


def test_sigterm_finishes_work_runs_pending_jobs_and_exits_0(tmp_path: Path, sink: Sink) -> None:
    server = RunningServer(bucketlyd_command(tmp_path / "db.dat", TEST_HANDLERS))
    server.wait_ready()
    with server.client() as client:
        client.create_bucket("p", "Publisher", config={"sink_port": sink.port})
        client.send_many("p", list(range(10)))
        client.flush()
    server.process.send_signal(signal.SIGTERM)
    # The final run of the job publishes what was pending (the interval is an hour).
    conn, batch = sink.accept()
    sink.answer(conn, "ok")
    assert batch == list(range(10))
    assert server.stop() == 0
    logs = "\n".join(server.logs)
    for step in (
        "no longer accepting connections",
        "running each a final time",
        "closing the database file",
        "stopped",
    ):
        assert step in logs, step


def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    server = RunningServer(bucketlyd_command(tmp_path / "db.dat", TEST_HANDLERS))
    server.wait_ready()
    assert server.stop(signal.SIGINT) == 0


def test_shutdown_waits_for_an_in_flight_request(tmp_path: Path) -> None:
    """A create_bucket (a database write) sent just before SIGTERM is answered, not dropped."""
    from .conftest import RawConnection

    server = RunningServer(bucketlyd_command(tmp_path / "db.dat", TEST_HANDLERS))
    server.wait_ready()
    conn = RawConnection(server.host, server.port)
    conn.auth()
    conn.request(1, "create_bucket", bucket="late", handler="Recorder")
    reply: Any = conn.read()
    server.process.send_signal(signal.SIGTERM)
    assert reply.result["name"] == "late"
    conn.assert_closed()
    conn.close()
    assert server.stop() == 0
