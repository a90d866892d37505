"""Scheduled jobs: the slow part never stalls ingestion, and a failed run loses nothing."""

from __future__ import annotations

import time
from typing import Any

from bucketly.testing import RunningServer

from .conftest import Sink


def _wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_slow_job_does_not_stall_ingestion(server: RunningServer, sink: Sink) -> None:
    with server.client() as client:
        client.create_bucket("p", "Publisher", config={"sink_port": sink.port, "interval": 0.05})
        client.create_bucket("other", "Recorder")
        client.send_many("p", ["first"])
        client.flush()
        conn, batch = sink.accept()  # the job is now stuck in its slow part, holding "first"
        assert batch == ["first"]
        # While it is stuck, both this bucket and another take events and answer views.
        client.send_many("p", [f"during-{i}" for i in range(5000)])
        client.send_many("other", list(range(5000)))
        client.flush()
        assert client.view("other", "count") == 5000
        assert client.view("p", "state") == {"pending": 5000, "published": 0}
        stats = client.bucket_info("p")["jobs"]["publish"]
        assert stats["running"] is True
        sink.answer(conn, "ok")
        # The next run publishes exactly what came in meanwhile.
        conn, batch = sink.accept()
        sink.answer(conn, "ok")
        assert batch == [f"during-{i}" for i in range(5000)]
        assert _wait_for(lambda: client.view("p", "state")["published"] == 5001)


def test_a_failed_run_keeps_its_data_for_the_next(server: RunningServer, sink: Sink) -> None:
    with server.client() as client:
        client.create_bucket("p", "Publisher", config={"sink_port": sink.port, "interval": 0.05})
        client.send_many("p", [1, 2, 3])
        client.flush()
        conn, batch = sink.accept()
        client.send_many("p", [4])
        client.flush()
        sink.answer(conn, "database is down")  # this run fails
        conn, batch = sink.accept()
        sink.answer(conn, "ok")
        assert batch == [1, 2, 3, 4]  # put back in front of what came after
        state = _wait_for(lambda: (s := client.view("p", "state"))["published"] == 4 and s)
        assert state["pending"] == 0
        job = client.stats()["buckets"]["p"]["jobs"]["publish"]
        assert job["failures"] == 1 and job["consecutive_failures"] == 0
        assert "database is down" in job["last_error"]
    server.wait_for_log(r"job p\.publish failed \(1 in a row\)")
    server.wait_for_log(r"job p\.publish recovered after 1 failed runs")


def test_repeated_failures_are_counted_not_logged_each_time(
    server: RunningServer, sink: Sink
) -> None:
    with server.client() as client:
        client.create_bucket("p", "Publisher", config={"sink_port": sink.port, "interval": 0.02})
        client.send_many("p", ["x"])
        client.flush()
        for _ in range(5):
            conn, batch = sink.accept()
            assert batch == ["x"]
            sink.answer(conn, "no")
        _wait_for(lambda: client.bucket_info("p")["jobs"]["publish"]["failures"] >= 5)
        client.delete_bucket("p")
    assert sum("job p.publish failed" in line for line in server.logs) == 1
