"""The statsd listener of a real bucketlyd, fed by real statsd clients nobody here wrote (the PyPI
``statsd`` package over UDP and TCP, ``datadog``'s DogStatsd); values read back through views.

UDP has no acknowledgement: each test waits until the server's ``stats`` say it has taken the
lines sent (``_wait_taken``), then reads the views.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import statsd
import statsd.client.base
from datadog.dogstatsd import base as dogstatsd_base
from datadog.dogstatsd.base import DogStatsd

from bucketly import Client
from bucketly.testing import RunningServer, run_server

WAIT = 10.0


def _statsd_stats(client: Client) -> dict[str, Any]:
    stats: dict[str, Any] = client.stats()["statsd"]
    return stats


def _taken(stats: dict[str, Any]) -> int:
    return int(stats["metrics"]) + sum(stats["rejected"].values())


def _wait_taken(client: Client, count: int) -> dict[str, Any]:
    """Wait until the listener has taken ``count`` metrics or rejects since it started."""
    deadline = time.monotonic() + WAIT
    while True:
        stats = _statsd_stats(client)
        if _taken(stats) >= count:
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"the listener took {_taken(stats)} of {count}: {stats}")
        time.sleep(0.01)


@pytest.fixture
def statsd_server(tmp_path: Path) -> Iterator[tuple[RunningServer, Client, int]]:
    args = ["--statsd", "127.0.0.1:0", "--statsd-flush-interval", "3600",
            "--statsd-percentiles", "90,99", "--statsd-routes", "checkout.=shop"]
    with run_server(database=tmp_path / "db.dat", extra_args=args) as server:
        with server.client() as client:
            port = _statsd_stats(client)["address"][1]
            yield server, client, port


@pytest.fixture
def sampled_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clients drop a sampled metric unless ``random() <= rate``: make them send all, so
    what was sent is known, and the server must still scale each by 1 / rate."""
    monkeypatch.setattr(statsd.client.base, "random", types.SimpleNamespace(random=lambda: 0.0))
    monkeypatch.setattr(dogstatsd_base, "random", lambda: 0.0)


def test_statsd_client_over_udp_every_type(
    statsd_server: tuple[RunningServer, Client, int], sampled_always: None
) -> None:
    _, client, port = statsd_server
    sc = statsd.StatsClient("127.0.0.1", port)
    sc.incr("hits")
    sc.incr("hits", 4)
    sc.incr("hits", 1, rate=0.25)  # stands for 4
    sc.decr("hits", 2)
    sc.gauge("queue", 10)
    sc.gauge("queue", 5, delta=True)
    sc.gauge("queue", -3, delta=True)
    for ms in (12, 7, 30, 1, 18):
        sc.timing("db.query", ms)
    sc.timing("db.query", 100, rate=0.5)  # counts 2, but is one sample
    sc.set("visitors", "ann")
    sc.set("visitors", "bob")
    sc.set("visitors", "ann")
    with sc.pipeline() as pipe:  # several lines in one datagram
        pipe.incr("piped", 2)
        pipe.incr("piped", 3)
    sc.close()
    _wait_taken(client, 18)
    assert client.view("statsd", "counter", name="hits")["count"] == 1 + 4 + 4 - 2
    assert client.view("statsd", "counter", name="piped")["count"] == 5
    assert client.view("statsd", "gauge", name="queue") == 12
    timer = client.view("statsd", "timer", name="db.query")
    assert {k: timer[k] for k in ("count", "samples", "sum", "lower", "upper", "mean", "median",
                                  "upper_90", "upper_99")} == {
        "count": 7, "samples": 6, "sum": 168, "lower": 1, "upper": 100, "mean": 28,
        "median": 15, "upper_90": 30, "upper_99": 100,  # statsd: 5th of 6, 6th of 6
    }
    assert client.view("statsd", "set", name="visitors") == {"count": 2}
    assert _statsd_stats(client)["rejected"]["bad_value"] == 0


def test_statsd_client_over_tcp_and_the_last_line_without_newline(
    statsd_server: tuple[RunningServer, Client, int],
) -> None:
    _, client, port = statsd_server
    tcp = statsd.TCPStatsClient("127.0.0.1", port)
    tcp.connect()
    tcp.incr("tcp.hits", 3)
    tcp.gauge("tcp.level", 9)
    tcp.timing("tcp.rt", 5)
    tcp.close()
    # statsd drops a last line that has no newline when the peer closes; bucketly takes it.
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"tcp.hits:2|c\ntcp.hits:1")
        raw.sendall(b"0|c")
    _wait_taken(client, 5)
    assert client.view("statsd", "counter", name="tcp.hits")["count"] == 3 + 2 + 10
    assert client.view("statsd", "gauge", name="tcp.level") == 9
    assert client.view("statsd", "timer", name="tcp.rt")["sum"] == 5
    assert _statsd_stats(client)["tcp_connections"] == 2


def test_dogstatsd_tags_distributions_and_sample_rates(
    statsd_server: tuple[RunningServer, Client, int], sampled_always: None
) -> None:
    _, client, port = statsd_server
    dog = DogStatsd(host="127.0.0.1", port=port, disable_telemetry=True,
                    origin_detection_enabled=False)
    try:
        dog.increment("api.calls", tags=["env:prod", "route:/a"])
        dog.increment("api.calls", 2, tags=["route:/a", "env:prod"])  # same series, any order
        dog.increment("api.calls", tags=["env:dev"], sample_rate=0.1)  # stands for 10
        dog.gauge("api.pool", 4, tags=["env:prod"])
        for size in (100, 300, 200):
            dog.distribution("api.size", size, tags=["env:prod"])
        dog.histogram("api.hist", 2.5)
        dog.timing("api.t", 8)
        dog.set("api.users", "u1", tags=["env:prod"])
        dog.set("api.users", "u2", tags=["env:prod"])
        dog.flush()
    finally:
        dog.close_socket()
    _wait_taken(client, 11)
    prod = ["env:prod", "route:/a"]
    assert client.view("statsd", "counter", name="api.calls", tags=prod)["count"] == 3
    assert client.view("statsd", "counter", name="api.calls", tags=["env:dev"])["count"] == 10
    assert client.view("statsd", "counter", name="api.calls") is None  # untagged: none sent
    assert client.view("statsd", "gauge", name="api.pool", tags=["env:prod"]) == 4
    size = client.view("statsd", "timer", name="api.size", tags=["env:prod"])
    assert (size["count"], size["sum"], size["median"], size["upper"]) == (3, 600, 200, 300)
    assert client.view("statsd", "timer", name="api.hist")["sum"] == 2.5
    assert client.view("statsd", "timer", name="api.t")["sum"] == 8
    assert client.view("statsd", "set", name="api.users", tags=["env:prod"]) == {"count": 2}


def test_bad_lines_are_counted_by_reason_and_the_rest_is_taken(
    statsd_server: tuple[RunningServer, Client, int],
) -> None:
    _, client, port = statsd_server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"ok:1|c\nbroken\nok:x|c\nok:1|c|@2\nok:1|q\n\xff:1|c\nok:2|c", ("127.0.0.1",
                                                                                 port))
    stats = _wait_taken(client, 7)
    assert stats["metrics"] == 2
    rejected = {k: v for k, v in stats["rejected"].items() if v}
    assert rejected == {"no_value": 1, "bad_value": 1, "bad_sample_rate": 1, "bad_type": 1,
                        "not_utf8": 1}
    assert client.view("statsd", "counter", name="ok")["count"] == 3


def test_routes_send_a_prefix_to_its_own_bucket(
    statsd_server: tuple[RunningServer, Client, int],
) -> None:
    _, client, port = statsd_server
    assert {b["name"] for b in client.buckets()} == {"statsd", "shop"}
    sc = statsd.StatsClient("127.0.0.1", port)
    sc.incr("checkout.orders", 2)
    sc.incr("home.views", 5)
    sc.close()
    _wait_taken(client, 2)
    assert client.view("shop", "counter", name="checkout.orders")["count"] == 2
    assert client.view("shop", "counter", name="home.views") is None
    assert client.view("statsd", "counter", name="home.views")["count"] == 5
    assert client.view("statsd", "counter", name="checkout.orders") is None


def test_sources_outside_the_allow_list_are_refused_and_counted(tmp_path: Path) -> None:
    args = ["--statsd", "127.0.0.1:0", "--statsd-allow", "10.0.0.0/8"]
    with run_server(database=tmp_path / "db.dat", extra_args=args) as server:
        with server.client() as client:
            port = _statsd_stats(client)["address"][1]
            sc = statsd.StatsClient("127.0.0.1", port)
            sc.incr("sneaky")
            sc.close()
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"sneaky:1|c\n")
            stats = _wait_taken(client, 2)
            assert stats["rejected"]["source_not_allowed"] == 2
            assert stats["metrics"] == 0
            assert client.view("statsd", "counter", name="sneaky") is None


class _PlaintextReceiver:
    """A Graphite plaintext (carbon line protocol) receiver: collects what each connection
    sends; ``wait_flush()`` returns the lines of the next connection that closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.flushes: list[list[str]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            with self._changed:
                self.flushes.append(data.decode().splitlines())
                self._changed.notify_all()

    def wait_flush(self, index: int) -> list[str]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.flushes) > index, WAIT):
                raise AssertionError(f"no flush {index} reached the receiver")
            return self.flushes[index]

    def close(self) -> None:
        self.sock.close()


def test_graphite_backend_writes_one_flush_with_statsds_names(tmp_path: Path) -> None:
    receiver = _PlaintextReceiver()
    interval = 1.0
    args = ["--statsd", "127.0.0.1:0", "--statsd-flush-interval", str(interval),
            "--statsd-graphite", f"127.0.0.1:{receiver.port}"]
    try:
        with run_server(database=tmp_path / "db.dat", extra_args=args) as server:
            with server.client() as client:
                port = _statsd_stats(client)["address"][1]
                # Whatever flush is under way, the next one after these is complete: wait for
                # the flush count to move, then send, then take the flush after that.
                start = _statsd_stats(client)["flushes"]
                deadline = time.monotonic() + WAIT
                while _statsd_stats(client)["flushes"] == start:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                flushed = _statsd_stats(client)["flushes"]
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.sendto(b"app.hits:3|c\napp.hits:1|c|@0.5\napp.rt:10|ms\napp.rt:30|ms\n"
                               b"app.mem:7.5|g\napp.users:ann|s\napp.users:bob|s",
                               ("127.0.0.1", port))
                stats = _wait_taken(client, 7)
                assert stats["flushes"] == flushed, "the flush came between: run it again"
                while _statsd_stats(client)["flushes"] == flushed:
                    assert time.monotonic() < deadline + WAIT
                    time.sleep(0.01)
                last = client.view("statsd", "metrics", interval="last")
                # Flushes with nothing to say send nothing: the first send is this flush.
                lines = receiver.wait_flush(0)
    finally:
        receiver.close()
    stamps = {line.rsplit(" ", 1)[1] for line in lines}
    assert len(stamps) == 1 and abs(int(stamps.pop()) - last["end"]) < 1
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "stats.counters.app.hits.rate 5",
        "stats.counters.app.hits.count 5",
        "stats.timers.app.rt.count 2",
        "stats.timers.app.rt.count_ps 2",
        "stats.timers.app.rt.sum 40",
        "stats.timers.app.rt.sum_squares 1000",
        "stats.timers.app.rt.mean 20",
        "stats.timers.app.rt.std 10",
        "stats.timers.app.rt.lower 10",
        "stats.timers.app.rt.upper 30",
        "stats.timers.app.rt.median 20",
        "stats.timers.app.rt.upper_90 30",
        "stats.gauges.app.mem 7.5",
        "stats.sets.app.users.count 2",
    ]
    assert last["counters"]["app.hits"] == {"count": 5, "rate": 5}


def test_kernel_drops_are_read_and_every_datagram_is_accounted_for(tmp_path: Path) -> None:
    args = ["--statsd", "127.0.0.1:0", "--statsd-receive-buffer", "4096"]
    with run_server(database=tmp_path / "db.dat", extra_args=args) as server:
        with server.client() as client:
            port = _statsd_stats(client)["address"][1]
            sent = 2000
            # Stopped, the server reads nothing: the small buffer fills and the kernel drops.
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    for _ in range(sent):
                        udp.sendto(b"flood:1|c", ("127.0.0.1", port))
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            deadline = time.monotonic() + WAIT
            while True:
                stats = _statsd_stats(client)
                if stats["datagrams"] + stats["kernel_drops"] >= sent:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.01)
            assert stats["kernel_drops"] > 0
            assert stats["datagrams"] + stats["kernel_drops"] == sent
            taken = client.view("statsd", "counter", name="flood")["count"]
            assert taken == stats["datagrams"]


#: Where .ci/run installs hot-shots (npm): ``npm install --prefix tests/node hot-shots@18``.
HOT_SHOTS = Path(__file__).parent / "node"

HOT_SHOTS_SCRIPT = r"""
const StatsD = require('hot-shots');
Math.random = () => 0;  // send every sampled metric: the server must still scale by 1 / rate
const c = new StatsD({host: '127.0.0.1', port: Number(process.env.STATSD_PORT), protocol: 'udp',
                      errorHandler: (e) => { console.error(e); process.exit(2); }});
c.increment('hs.hits', 3);
c.increment('hs.hits', 1, 0.25);
c.gauge('hs.level', 10);
c.gaugeDelta('hs.level', -4);
c.timing('hs.rt', 12, ['env:prod']);
c.timing('hs.rt', 30, ['env:prod']);
c.distribution('hs.size', 7);
c.histogram('hs.hist', 2.5);
c.set('hs.users', 'ann');
c.set('hs.users', 'bob');
c.close((err) => process.exit(err ? 3 : 0));
"""


def test_hot_shots_from_npm(statsd_server: tuple[RunningServer, Client, int]) -> None:

    node = shutil.which("node")
    if node is None or not (HOT_SHOTS / "node_modules" / "hot-shots").is_dir():
        why = "needs node and hot-shots (npm install --prefix tests/node hot-shots@18)"
        if os.environ.get("CI") or os.environ.get("BUCKETLY_REQUIRE_PEERS"):
            pytest.fail(f"{why}; CI or BUCKETLY_REQUIRE_PEERS is set, so it fails")
        pytest.skip(why)
    _, client, port = statsd_server
    env = {**os.environ, "NODE_PATH": str(HOT_SHOTS / "node_modules"), "STATSD_PORT": str(port)}
    subprocess.run([node, "-e", HOT_SHOTS_SCRIPT], cwd=HOT_SHOTS, check=True, timeout=30, env=env)
    _wait_taken(client, 10)
    assert client.view("statsd", "counter", name="hs.hits")["count"] == 3 + 4
    assert client.view("statsd", "gauge", name="hs.level") == 6
    rt = client.view("statsd", "timer", name="hs.rt", tags=["env:prod"])
    assert (rt["count"], rt["sum"], rt["lower"], rt["upper"]) == (2, 42, 12, 30)
    assert client.view("statsd", "timer", name="hs.size")["sum"] == 7
    assert client.view("statsd", "timer", name="hs.hist")["sum"] == 2.5
    assert client.view("statsd", "set", name="hs.users") == {"count": 2}
