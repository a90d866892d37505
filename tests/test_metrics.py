"""``--metrics-address``: Prometheus metrics and health checks of a real bucketlyd over HTTP."""

from __future__ import annotations

import dataclasses
import http.client
import re
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import bucketly
from bucketly.errors import WIRE_CODES
from bucketly.protocol import ClientProtocol, encode_request
from bucketly.protocol.messages import pack
from bucketly.server.config import ServerConfig
from bucketly.server.metrics import CLOSING_LIMITS, METRICS, WAITS
from bucketly.testing import RunningServer, bucketlyd_command, run_server

from .conftest import TEST_HANDLERS, RawConnection
from .test_docs import _generated, _replace_generated

DOCS = Path(__file__).parent.parent / "docs" / "operations.md"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


@pytest.fixture
def metrics(tmp_path: Path) -> Iterator[tuple[RunningServer, int]]:
    port = _free_port()
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--metrics-address", f"127.0.0.1:{port}"]) as server:
        yield server, port


def test_the_counters_move_by_exactly_what_was_sent_and_failed(
    metrics: tuple[RunningServer, int],
) -> None:
    server, port = metrics
    before = _samples(port)
    assert before[("bucketly_events_applied_total", ())] == 0
    # Reasons known in advance are there at 0 before they happen (so rate() sees the first).
    for code in WIRE_CODES:
        assert before[("bucketly_events_refused_total", (("reason", code),))] == 0
    assert before[("bucketly_frames_rejected_total", (("reason", "bad_frame"),))] == 0
    assert before[("bucketly_authentications_total", (("result", "password_failed"),))] == 0
    with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
        client.create_bucket("clicks", "Recorder")
        client.send_many("clicks", list(range(25)))
        client.flush()
        client.send("clicks", {"boom": True})
        with pytest.raises(bucketly.HandlerError):
            client.flush()
        samples = _samples(port)
    bucket = (("bucket", "clicks"),)
    assert samples[("bucketly_bucket_events_applied_total", bucket)] == 25
    assert samples[("bucketly_events_applied_total", ())] == 25
    assert samples[("bucketly_bucket_handler_errors_total", bucket)] == 1
    assert samples[("bucketly_bucket_unavailable", bucket)] == 0
    assert samples[("bucketly_buckets", ())] == 1
    assert samples[("bucketly_connections", ())] >= 1
    assert samples[("bucketly_connections_accepted_total", ())] >= 1
    # The process collector: the server's own resident memory and start time.
    assert samples[("process_resident_memory_bytes", ())] > 10 * 1024 * 1024
    assert abs(samples[("process_start_time_seconds", ())] - time.time()) < 600


def test_every_refusal_is_counted_by_its_reason(metrics: tuple[RunningServer, int]) -> None:
    server, port = metrics
    admin = RawConnection(server.host, server.port)
    admin.auth()
    admin.call(1, "create_bucket", bucket="d", handler="Recorder", durable=True)
    admin.call(2, "create_user", user="bob", password="bob-pw")
    assert admin.call(3, "send", bucket="nope", events=[1, 2, 3]).code == "unknown_bucket"
    # A handler error in a durable bucket: refused after it was queued on the journal.
    assert admin.call(4, "send", bucket="d", events=[{"boom": True}]).code == "handler_error"
    admin.send_bytes(b"\x00\x00\x00\x01\xc1")  # a frame that is not MessagePack
    assert admin.read().code == "bad_frame"
    bob = RawConnection(server.host, server.port)
    assert bob.call(5, "auth", user="bob", password="wrong").code == "auth_failed"
    bob.auth("bob", "bob-pw")
    assert bob.call(6, "send", bucket="d", events=[1, 2]).code == "permission_denied"
    anonymous = RawConnection(server.host, server.port)
    for i in range(17):
        anonymous.request(i, "ping")
    replies = [anonymous.read() for _ in range(17)]
    assert replies[-1].code == "limit_exceeded"
    for conn in (admin, bob, anonymous):
        conn.close()
    samples = _samples(port)
    refused = {labels[0][1]: value for (name, labels), value in samples.items()
               if name == "bucketly_events_refused_total" and value}
    assert refused == {"unknown_bucket": 3, "handler_error": 1, "permission_denied": 2}
    assert samples[("bucketly_frames_rejected_total", (("reason", "bad_frame"),))] == 1
    assert samples[
        ("bucketly_connections_closed_by_limit_total", (("limit", "pre_auth_frames"),))
    ] == 1
    auth = {labels[0][1]: value for (name, labels), value in samples.items()
            if name == "bucketly_authentications_total" and value}
    assert auth == {"password_ok": 2, "password_failed": 1}


def test_jobs_and_durable_buckets_have_their_metrics(metrics: tuple[RunningServer, int]) -> None:
    server, port = metrics
    with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
        client.create_bucket("d", "Recorder", durable=True)
        client.send_many("d", [1, 2, 3])
        client.flush()
        client.create_bucket("pub", "Publisher", config={"interval": 0.05})
        deadline = time.monotonic() + 10
        while _samples(port).get(
            ("bucketly_job_runs_total", (("bucket", "pub"), ("job_name", "publish"))), 0
        ) < 1:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.05)
    samples = _samples(port)
    job = (("bucket", "pub"), ("job_name", "publish"))
    assert samples[("bucketly_job_failures_total", job)] >= 0
    assert ("bucketly_job_seconds_since_success", job) in samples
    assert samples[("bucketly_journal_records_total", ())] == 1
    assert samples[("bucketly_journal_events_total", ())] == 3
    assert samples[("bucketly_journal_commits_total", ())] >= 1
    d = (("bucket", "d"),)
    assert samples[("bucketly_bucket_journal_records_since_snapshot", d)] == 1
    assert samples[("bucketly_bucket_journal_queued_bytes", d)] == 0
    assert samples[("bucketly_bucket_seconds_since_snapshot", d)] >= 0


def test_health_readiness_and_what_the_endpoint_refuses(
    metrics: tuple[RunningServer, int],
) -> None:
    _, port = metrics
    assert _get(port, "/healthz") == (200, b'{"status": "ok"}\n')
    status, body = _get(port, "/readyz")
    assert status == 200 and b'"ready": true' in body
    assert _get(port, "/metrics", "POST")[0] == 405
    assert _get(port, "/nowhere")[0] == 404
    assert _get(port, "/metrics", "HEAD")[0] == 200
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"garbage\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")


def test_readyz_is_503_while_a_durable_bucket_recovers(tmp_path: Path) -> None:
    db = tmp_path / "db.dat"
    never = ["--snapshot-events", str(10**12), "--snapshot-seconds", str(10**9)]
    with run_server(handlers=TEST_HANDLERS, database=db, extra_args=never) as server:
        with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
            client.create_bucket("big", "BatchCounter", durable=True)
            batch = [0] * 1000
            for _ in range(400):
                client.send_many("big", batch)
            client.flush()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    port = _free_port()
    restarted = RunningServer(bucketlyd_command(
        db, TEST_HANDLERS, 0, [*never, "--metrics-address", f"127.0.0.1:{port}"]
    ))
    try:
        answers: list[tuple[int, Any]] = []
        deadline = time.monotonic() + 60
        while not answers or answers[-1][0] != 200:
            assert time.monotonic() < deadline and restarted.returncode is None
            try:
                answers.append(_get(port, "/readyz"))
            except OSError:
                time.sleep(0.005)  # not listening yet
        assert answers[0][0] == 503, answers[:3]
        assert b"recovering" in answers[0][1]
        assert any("recovered durable bucket 'big'" in line for line in restarted.logs)
    finally:
        restarted.stop()


def _histogram(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
               **labels: str) -> tuple[float, float, dict[float, float]]:
    """(count, sum, {le: cumulative count}) of histogram ``name`` with ``labels``."""
    own = tuple(sorted(labels.items()))
    buckets = {
        float(dict(key)["le"]): value for (sample, key), value in samples.items()
        if sample == f"{name}_bucket" and tuple(kv for kv in key if kv[0] != "le") == own
    }
    return samples[(f"{name}_count", own)], samples[(f"{name}_sum", own)], buckets


def test_every_known_limit_is_exported_at_0_from_the_start(
    metrics: tuple[RunningServer, int],
) -> None:
    _, port = metrics
    samples = _samples(port)
    limits = {labels[0][1]: value for (name, labels), value in samples.items()
              if name == "bucketly_connections_closed_by_limit_total"}
    assert limits == dict.fromkeys(CLOSING_LIMITS, 0)
    waits = {labels[0][1]: value for (name, labels), value in samples.items()
             if name == "bucketly_requests_waiting"}
    assert waits == dict.fromkeys(WAITS, 0)


SRC = Path(bucketly.__file__).parent
#: Where a limit's name is given when a connection is closed or refused for it.
_LIMIT_NAMED = re.compile(
    r'limit_exceeded\(\s*"(\w+)"|closed_by_limit\["(\w+)"\]|"limit": "(\w+)"'
    r'|victims\.append\(\(victim, "(\w+)"(?: if full else "(\w+)")?|limit, what = "(\w+)"'
)


def test_the_known_limits_are_every_limit_the_code_closes_for() -> None:
    named = {
        name
        for path in SRC.rglob("*.py")
        for match in _LIMIT_NAMED.finditer(path.read_text())
        for name in match.groups() if name
    }
    assert named == set(CLOSING_LIMITS)
    # Each is the option that sets it.
    assert set(CLOSING_LIMITS) <= {field.name for field in dataclasses.fields(ServerConfig)}


def test_bytes_in_and_out_are_exactly_what_went_over_the_socket(
    metrics: tuple[RunningServer, int],
) -> None:
    server, port = metrics
    before = _samples(port)
    conn = socket.create_connection((server.host, server.port), timeout=10)
    sent = encode_request(1, "auth", {"user": "admin", "password": "admin"}) + encode_request(
        2, "ping", {"padding": "x" * 5000}
    )
    conn.sendall(sent)
    client = ClientProtocol(max_frame_size=1 << 30)
    received = 0
    messages: list[Any] = []
    while len(messages) < 3:  # the greeting and two replies
        data = conn.recv(65536)
        assert data, "closed"
        received += len(data)
        client.receive_data(data)
        while (message := client.next_event()) is not None:
            messages.append(message)
    conn.close()
    after = _samples(port)
    assert after[("bucketly_received_bytes_total", ())] - before[
        ("bucketly_received_bytes_total", ())] == len(sent)
    assert after[("bucketly_sent_bytes_total", ())] - before[
        ("bucketly_sent_bytes_total", ())] == received


def test_views_are_timed_and_the_handler_reports_its_state_size(
    metrics: tuple[RunningServer, int],
) -> None:
    server, port = metrics
    with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
        client.create_bucket("v", "Recorder")
        client.create_bucket("failing", "Recorder", config={"state_bytes": "raise"})
        client.create_bucket("wrong", "Recorder", config={"state_bytes": "text"})
        client.create_bucket("batches", "BatchCounter")  # reports no size
        client.send_many("v", list(range(10)))
        client.flush()
        assert _samples(port)[("bucketly_bucket_state_bytes", (("bucket", "v"),))] == 80
        for _ in range(7):
            client.view("v", "count")
        client.view("v", "nap", seconds=0.3)
        with pytest.raises(bucketly.HandlerError):
            client.view("v", "broken")
        samples = _samples(port)
        assert client.view("v", "count") == 10  # the server still works
    count, total, buckets = _histogram(samples, "bucketly_bucket_view_duration_seconds",
                                       bucket="v")
    assert count == 9  # 7 counts, the nap, the failed one
    assert 0.3 <= total < 5
    assert buckets[float("inf")] == 9
    assert buckets[0.25] == 8 and buckets[0.5] == 9  # only the nap took 0.3 s
    assert _histogram(samples, "bucketly_bucket_view_duration_seconds",
                      bucket="batches")[0] == 0
    sizes = {labels[0][1]: value for (name, labels), value in samples.items()
             if name == "bucketly_bucket_state_bytes"}
    assert sizes == {"v": 80}  # no sample for a handler that fails, lies or reports none
    assert any("state_bytes raised RuntimeError" in line for line in server.logs)
    assert any("state_bytes returned 'lots'" in line for line in server.logs)


def test_the_event_loop_lag_is_measured(metrics: tuple[RunningServer, int]) -> None:
    server, port = metrics
    before = _histogram(_samples(port), "bucketly_event_loop_lag_seconds")
    with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
        client.create_bucket("v", "Recorder")
        client.view("v", "nap", seconds=0.6)  # the loop stands still for 0.6 s
    deadline = time.monotonic() + 10
    while True:
        after = _histogram(_samples(port), "bucketly_event_loop_lag_seconds")
        # The timer due during the nap fired once it ended: between 0.5 and 0.6 s late.
        if after[2][0.25] < after[0]:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    slow = (after[0] - after[2][0.25]) - (before[0] - before[2][0.25])
    assert slow == 1
    assert after[2][1.0] == after[0]
    assert after[1] - before[1] >= 0.45
    assert after[0] > before[0]


def test_durable_commits_and_the_log_have_their_metrics(tmp_path: Path) -> None:
    port = _free_port()
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--metrics-address", f"127.0.0.1:{port}",
                                "--snapshot-events", "100",
                                "--snapshot-seconds", str(10**9)]) as server:
        conn = RawConnection(server.host, server.port)
        conn.auth()
        assert conn.call(1, "create_bucket", bucket="d", handler="Recorder",
                         durable=True).result is not None
        bodies = []
        for i in range(5):  # one commit each: each waits for its reply
            args = {"bucket": "d", "events": list(range(i + 1))}
            bodies.append(pack({"id": 10 + i, "op": "send", **args}))
            assert conn.call(10 + i, "send", **args).result == {"accepted": i + 1}
        samples = _samples(port)
        assert samples[("bucketly_bucket_journal_log_bytes", (("bucket", "d"),))] == sum(
            map(len, bodies))
        assert samples[("bucketly_journal_written_bytes_total", ())] == sum(map(len, bodies))
        commits = samples[("bucketly_journal_commits_total", ())]
        assert commits == 5
        count, total, buckets = _histogram(samples, "bucketly_journal_commit_duration_seconds")
        assert buckets[float("inf")] == 5
        assert count == 5 and total == samples[("bucketly_journal_commit_seconds_total", ())]
        sizes = _histogram(samples, "bucketly_journal_commit_sends")
        assert sizes[0] == 5 and sizes[1] == 5 and sizes[2][1.0] == 5

        # Eight sends written at once by one connection while the database is locked: they
        # wait for one commit, and then share it.
        lock = sqlite3.connect(tmp_path / "db.dat", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        try:
            conn.send_bytes(b"".join(
                encode_request(100 + i, "send", {"bucket": "d", "events": [i]})
                for i in range(8)
            ) + encode_request(200, "ping", {}))  # the ping is held behind them
            deadline = time.monotonic() + 10
            while (waiting := {
                labels[0][1]: value for (name, labels), value in _samples(port).items()
                if name == "bucketly_requests_waiting"
            }) != {"commit": 8, "pipeline": 1, "bucket_queue": 0, "turn": 0}:
                assert time.monotonic() < deadline, waiting
                time.sleep(0.02)
        finally:
            lock.rollback()
            lock.close()
        assert waiting == {"commit": 8, "pipeline": 1, "bucket_queue": 0, "turn": 0}
        assert [conn.read().id for _ in range(9)] == [*range(100, 108), 200]
        samples = _samples(port)
        assert {labels[0][1]: value for (name, labels), value in samples.items()
                if name == "bucketly_requests_waiting"} == dict.fromkeys(WAITS, 0)
        sizes = _histogram(samples, "bucketly_journal_commit_sends")
        assert sizes[0] == samples[("bucketly_journal_commits_total", ())]
        assert sizes[1] == samples[("bucketly_journal_records_total", ())] == 13
        assert sizes[2][4.0] < sizes[0]  # a commit of more than 4 sends: they shared it
        # Past --snapshot-events, a snapshot compacts the log: its bytes go back to 0.
        assert conn.call(300, "send", bucket="d", events=list(range(100))).result
        deadline = time.monotonic() + 10
        while _samples(port)[("bucketly_bucket_journal_log_bytes", (("bucket", "d"),))]:
            assert time.monotonic() < deadline, "no snapshot"
            time.sleep(0.02)
        conn.close()


def test_a_send_waiting_for_room_in_a_full_durable_bucket_is_counted(tmp_path: Path) -> None:
    port = _free_port()
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
                    extra_args=["--metrics-address", f"127.0.0.1:{port}",
                                "--max-bucket-queue", "1"]) as server:
        first = RawConnection(server.host, server.port)
        first.auth()
        first.call(1, "create_bucket", bucket="d", handler="Recorder", durable=True)
        second = RawConnection(server.host, server.port)
        second.auth()
        lock = sqlite3.connect(tmp_path / "db.dat", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the commit waits: the bucket's queue stays full
        try:
            first.request(2, "send", bucket="d", events=[1])
            deadline = time.monotonic() + 10
            while _samples(port)[("bucketly_requests_waiting", (("wait", "commit"),))] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            second.request(3, "send", bucket="d", events=[2])
            expected = {"commit": 1, "bucket_queue": 1, "pipeline": 0, "turn": 0}
            while (waiting := {
                labels[0][1]: value for (name, labels), value in _samples(port).items()
                if name == "bucketly_requests_waiting"
            }) != expected:
                assert time.monotonic() < deadline, waiting
                time.sleep(0.02)
        finally:
            lock.rollback()
            lock.close()
        assert first.read().result == {"accepted": 1}
        assert second.read().result == {"accepted": 1}
        assert {labels[0][1]: value for (name, labels), value in _samples(port).items()
                if name == "bucketly_requests_waiting"} == dict.fromkeys(WAITS, 0)
        first.close()
        second.close()


def metrics_table() -> str:
    """The metrics table of docs/operations.md, as ``METRICS`` makes it."""
    lines = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for spec in METRICS:
        name = spec.name + ("_total" if spec.kind == "counter" else "")
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        lines.append(f"| `{name}` | {spec.kind} | {labels} | {spec.help} |")
    return "\n".join(lines) + "\n"


def test_every_metric_is_in_docs_operations_md() -> None:
    assert _generated(DOCS.read_text(), "metrics-table") == metrics_table(), (
        "docs/operations.md's metrics table is not bucketly.server.metrics.METRICS: run "
        "python -m tests.test_metrics --update"
    )
    documented = re.findall(r"^\| `(bucketly_\w+)` \| (\w+) \|", DOCS.read_text(), re.M)
    assert len(documented) == len(METRICS)

def test_a_snapshot_level_bucket_reports_the_age_of_its_snapshot(
    metrics: tuple[RunningServer, int],
) -> None:
    server, port = metrics
    key = ("bucketly_bucket_seconds_since_snapshot", (("bucket", "s"),))
    with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
        client.create_bucket("s", "Recorder", persistence="snapshot", snapshot_interval=1)
        client.create_bucket("m", "Recorder")
        client.send_many("s", [1, 2, 3])
        client.flush()
        deadline = time.monotonic() + 30
        while client.bucket_info("s")["snapshots"]["taken_at"] is None:
            assert time.monotonic() < deadline, "no snapshot was taken"
            time.sleep(0.02)
        taken_at = client.bucket_info("s")["snapshots"]["taken_at"]
        before = time.time()
        samples = _samples(port)
        after = time.time()
    assert before - taken_at - 0.01 <= samples[key] <= after - taken_at + 0.01
    assert ("bucketly_bucket_seconds_since_snapshot", (("bucket", "m"),)) not in samples

def test_the_statsd_listener_counts_in_the_metrics(tmp_path: Path) -> None:
    port = _free_port()
    with run_server(database=tmp_path / "db.dat",
                    extra_args=["--metrics-address", f"127.0.0.1:{port}",
                                "--statsd", "127.0.0.1:0"]) as server:
        with server.client() as client:
            statsd_port = client.stats()["statsd"]["address"][1]
            before = _samples(port)
            assert before[("bucketly_statsd_rejected_total", (("reason", "no_value"),))] == 0
            assert before[("bucketly_statsd_kernel_drops_total", ())] == 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"a:1|c\na:2:3|ms\nnope\nb:x|g", ("127.0.0.1", statsd_port))
            deadline = time.monotonic() + 10
            while client.stats()["statsd"]["metrics"] < 3:
                assert time.monotonic() < deadline, client.stats()["statsd"]
                time.sleep(0.01)
            after = _samples(port)
    assert after[("bucketly_statsd_metrics_total", ())] == 3
    assert after[("bucketly_statsd_rejected_total", (("reason", "no_value"),))] == 1
    assert after[("bucketly_statsd_rejected_total", (("reason", "bad_value"),))] == 1
    assert after[("bucketly_statsd_graphite_failures_total", ())] == 0

if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.test_metrics --update")
    DOCS.write_text(_replace_generated(DOCS.read_text(), "metrics-table", metrics_table()))
