"""``--metrics-address``: Prometheus metrics and health checks of a real bucketlyd over HTTP."""

from __future__ import annotations

import http.client
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import bucketly
from bucketly.errors import WIRE_CODES
from bucketly.server.metrics import METRICS
from bucketly.testing import RunningServer, bucketlyd_command, run_server

from .conftest import TEST_HANDLERS, RawConnection

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


def test_every_metric_is_in_docs_operations_md() -> None:
    text = DOCS.read_text()
    documented = re.findall(r"^\| `(bucketly_\w+)` \| (\w+) \| ([^|]*) \|", text, re.M)
    assert [(n, k, labels.strip()) for n, k, labels in documented] == [
        (spec.name + ("_total" if spec.kind == "counter" else ""), spec.kind,
         ", ".join(f"`{label}`" for label in spec.labels) or "-")
        for spec in METRICS
    ]


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
