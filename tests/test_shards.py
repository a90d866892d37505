"""Several bucketlyd servers, one routing client (issue 14): routing, partitions, merged views,
failures. Every behaviour test runs 2-3 real bucketlyd processes, each with its own database file.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.client.routing import Route, Router, hrw_owner
from bucketly.merging import merge_builtin, merge_name
from bucketly.protocol.messages import pack
from bucketly.testing import RunningServer, bucketlyd_command, run_server
from tests.conftest import AsyncProxy

HANDLERS = Path(__file__).parent / "shard_handlers.py"

#: Chi-square critical values at p = 0.001 by degrees of freedom: a fair split exceeds them
#: once in a thousand; the inputs are fixed, so the test is deterministic either way.
CHI2_P001 = {1: 10.83, 2: 13.82, 3: 16.27}


def _chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


# -- routing, in memory ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
def test_bucket_names_spread_evenly_over_the_servers(n: int) -> None:
    router = Router([f"10.0.0.{i}:8484" for i in range(n)])
    counts = collections.Counter(router.owner(f"bucket-{i}") for i in range(30_000))
    assert sorted(counts) == list(range(n))
    assert _chi_square([counts[i] for i in range(n)]) < CHI2_P001[n - 1]


def test_partition_keys_spread_evenly_and_always_meet_on_one_server() -> None:
    servers = ["10.0.0.1:8484", "10.0.0.2:8484", "10.0.0.3:8484"]
    route = Route("clicks", None, key_field="url", servers=[s.encode() for s in servers])
    counts = collections.Counter(route.server_for({"url": f"/page/{i}"}) for i in range(30_000))
    assert _chi_square([counts[i] for i in range(3)]) < CHI2_P001[2]
    # The same key, in any event, from the cache or not: the same server.
    first = [route.server_for({"url": f"/page/{i}", "user": "a"}) for i in range(1000)]
    route.cache.clear()
    assert [route.server_for({"url": f"/page/{i}", "user": "b"}) for i in range(1000)] == first


def test_adding_a_server_moves_only_the_buckets_that_land_on_it() -> None:
    old = Router(["a:1", "b:1", "c:1"])
    new = Router(["a:1", "b:1", "c:1", "d:1"])
    moved = 0
    for i in range(20_000):
        before, after = old.owner(f"b{i}"), new.owner(f"b{i}")
        if before != after:
            assert new.servers[after] == "d:1"  # never between the old servers
            moved += 1
    assert 0.2 < moved / 20_000 < 0.3  # about a quarter: the new server's share


def test_the_hash_is_the_documented_one() -> None:
    """Clients in other languages must route the same: pin the function (docs/scaling.md)."""
    import hashlib

    servers = [b"h1:8484", b"h2:8484"]
    weights = [
        int.from_bytes(hashlib.blake2b(s + b"\0" + b"clicks", digest_size=8).digest(), "big")
        for s in servers
    ]
    assert hrw_owner(servers, b"clicks") == weights.index(max(weights))
    key = pack("/home")  # a partition key hashes as its MessagePack encoding
    assert key == b"\xa5/home"


def test_bad_server_lists_are_refused() -> None:
    for servers in ([], "h:1", ["h:1", "h:1"], ["nohost"], ["h:99999"]):
        with pytest.raises(ValueError):
            Router(servers)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "results", "args", "expected"),
    [
        ("sum", [1, 2, 3], {}, 6),
        ("max", [1, None, 3], {}, 3),
        ("min", [4, None, 3], {}, 3),
        ("concat", [[1], [2, 3]], {}, [1, 2, 3]),
        ("union", [["b", "a"], ["a", "c"]], {}, ["a", "b", "c"]),
        ("dict_sum", [{"x": 1}, {"x": 2, "y": 1}], {}, {"x": 3, "y": 1}),
        ("dict_union", [{"x": ["a"]}, {"x": ["b"], "y": []}], {}, {"x": ["a", "b"], "y": []}),
        ("top", [[["a", 5], ["b", 1]], [["c", 3]]], {"n": 2}, [["a", 5], ["c", 3]]),
        ("top:1", [[["a", 5]], [["c", 7]]], {}, [["c", 7]]),
    ],
)
def test_builtin_merges(name: str, results: list[Any], args: dict[str, Any], expected: Any) -> None:
    assert merge_builtin(merge_name(name), results, args) == expected


def test_an_unknown_merge_name_fails_when_the_handler_is_declared() -> None:
    with pytest.raises(ValueError, match="unknown merge 'average'"):
        bucketly.view(merge="average")


# -- several real servers --------------------------------------------------------------------


class Cluster:
    """``n`` real bucketlyd processes, one database file each; ``restart(i)`` on the same port."""

    def __init__(self, tmp: Path, stack: contextlib.ExitStack, n: int) -> None:
        self.tmp = tmp
        self.servers: list[RunningServer] = [
            stack.enter_context(run_server(handlers=HANDLERS, database=tmp / f"db{i}.dat"))
            for i in range(n)
        ]
        stack.callback(self._stop_restarted)
        self._restarted: list[RunningServer] = []

    @property
    def addresses(self) -> list[str]:
        return [f"{s.host}:{s.port}" for s in self.servers]

    def restart(self, i: int) -> None:
        port = self.servers[i].port
        server = RunningServer(bucketlyd_command(self.tmp / f"db{i}.dat", HANDLERS, port))
        server.wait_ready()
        self.servers[i] = server
        self._restarted.append(server)

    def _stop_restarted(self) -> None:
        for server in self._restarted:
            if server.returncode is None:
                server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        yield Cluster(tmp_path, stack, 3)


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[Any]:
    """``connect(**kwargs)``: a client over the cluster's servers, sync or async, as admin."""
    opened: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs = {"servers": cluster.addresses, "user": "admin", "password": "admin", **kwargs}
        client: Any
        client = bucketly.Client(**kwargs) if request.param == "sync" else AsyncProxy(**kwargs)
        opened.append(client)
        return client

    yield make
    for client in opened:
        with contextlib.suppress(bucketly.BucketlyError):
            client.close()


def _events(n: int) -> list[dict[str, Any]]:
    return [{"url": f"/p{i % 97}", "user": f"u{(i * 7) % 131}", "n": i} for i in range(n)]


def test_client_with_servers_is_the_routing_client(connect: Any) -> None:
    client = connect()
    inner = getattr(client, "_client", client)
    assert isinstance(inner, bucketly.ShardedClient | bucketly.AsyncShardedClient)
    assert client.ping() == "pong"


def test_each_bucket_lives_on_its_hrw_server_only(connect: Any, cluster: Cluster) -> None:
    client = connect()
    names = [f"b{i}" for i in range(24)]
    for name in names:
        client.create_bucket(name, "Plain")
        client.send_many(name, [{}] * 5)
    client.flush()
    router = Router(cluster.addresses)
    for i, server in enumerate(cluster.servers):
        with server.client() as direct:
            held = sorted(b["name"] for b in direct.buckets())
        assert held == sorted(n for n in names if router.owner(n) == i)
    assert {client.view(name, "count") for name in names} == {5}
    listed = client.buckets()
    assert [b["name"] for b in listed] == sorted(names)


def test_partitioned_counts_are_exact_and_each_merge_works(connect: Any, cluster: Cluster) -> None:
    client = connect()
    client.create_bucket("clicks", "Clicks", partition_key="url")
    events = _events(20_000)
    for event in events[:10_000]:
        client.send("clicks", event)
    client.send_many("clicks", events[10_000:])
    client.flush()

    users: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        users[e["url"]].add(e["user"])
    assert client.view("clicks", "count") == 20_000  # sum
    assert {url: client.view("clicks", "users_of", url=url) for url in users} == {
        url: len(u) for url, u in users.items()
    }
    assert client.view("clicks", "all_users") == sorted({e["user"] for e in events})  # union
    assert sorted(client.view("clicks", "urls")) == sorted(users)  # concat
    assert client.view("clicks", "largest") == 19_999  # max
    assert client.view("clicks", "smallest") == 0  # min
    ranked = sorted(((url, len(u)) for url, u in users.items()), key=lambda p: -p[1])
    top = client.view("clicks", "top", n=5)  # top
    assert [count for _, count in top] == [count for _, count in ranked[:5]]
    assert client.view("clicks", "per_url") == {url: len(u) for url, u in users.items()}
    # A handler-defined merge: one of the servers runs it (the merge op).
    assert client.view("clicks", "events_spread") == {"partitions": 3, "events": 20_000}
    assert client.dump("clicks") == {url: sorted(u) for url, u in users.items()}

    # The key decides the server: every url on exactly one partition, and spread over all.
    partitions = client.dump_partitions("clicks")
    assert sorted(partitions) == sorted(cluster.addresses)
    seen = [url for dump in partitions.values() for url in dump]
    assert sorted(seen) == sorted(users)
    assert all(len(dump) > 10 for dump in partitions.values())
    info = client.bucket_info("clicks")
    assert info["events"] == 20_000
    assert info["partition"]["key"] == "url"
    assert info["merges"]["count"] == "sum" and info["merges"]["events_spread"] == "custom"


def test_a_view_without_merge_on_a_partitioned_bucket_is_refused(
    connect: Any, cluster: Cluster
) -> None:
    client = connect()
    client.create_bucket("clicks", "Clicks", partition_key="url")
    client.create_bucket("plain", "Plain", partition_key="url")
    client.send_many("clicks", _events(100))
    client.flush()
    with pytest.raises(bucketly.NotMergeable, match="declares no merge"):
        client.view("clicks", "unmerged")
    with pytest.raises(bucketly.NotMergeable, match="dump_merge"):
        client.dump("plain")
    # Each server refuses it too, to a client that asks one partition directly.
    with cluster.servers[0].client() as direct, pytest.raises(bucketly.NotMergeable):
        direct.view("clicks", "unmerged")


def test_a_bucket_partitioned_over_other_servers_is_refused(cluster: Cluster) -> None:
    with bucketly.Client(servers=cluster.addresses, user="admin", password="admin") as client:
        client.create_bucket("clicks", "Clicks", partition_key="url")
    with bucketly.Client(servers=cluster.addresses[:2], user="admin", password="admin") as fewer:
        with pytest.raises(bucketly.RoutingError, match="partitioned over"):
            fewer.send("clicks", {"url": "/", "user": "a"})


def test_a_key_function_partitions_by_what_it_returns(cluster: Cluster) -> None:
    def domain(event: dict[str, Any]) -> str:
        return str(event["url"]).split("/")[2]

    with bucketly.Client(
        servers=cluster.addresses, user="admin", password="admin",
        key_functions={"domain": domain},
    ) as client:
        client.create_bucket("clicks", "Clicks", partition_function="domain")
        events = [{"url": f"http://d{i % 20}.example/p{i}", "user": f"u{i}"} for i in range(2000)]
        client.send_many("clicks", events)
        client.flush()
        assert client.view("clicks", "count") == 2000
        by_server = client.dump_partitions("clicks")
        for dump in by_server.values():
            domains = {url.split("/")[2] for url in dump}
            others = [d for other in by_server.values() if other is not dump for d in other]
            assert not domains & {url.split("/")[2] for url in others}
    with bucketly.Client(servers=cluster.addresses, user="admin", password="admin") as blind:
        with pytest.raises(bucketly.RoutingError, match="key function 'domain'"):
            blind.send("clicks", events[0])


def test_an_event_without_the_key_is_refused_clearly(connect: Any) -> None:
    client = connect()
    client.create_bucket("clicks", "Clicks", partition_key="url")
    with pytest.raises(bucketly.RoutingError, match="field 'url'"):
        client.send("clicks", {"user": "a"})


def test_one_server_killed_mid_run(connect: Any, cluster: Cluster) -> None:
    """No acknowledged event lost, none counted twice; the failure is named, never silent."""
    client = connect(batch_size=50)
    client.create_bucket("clicks", "Clicks", durable=True, partition_key="url")
    events = _events(3000)
    rounds = [events[i:i + 300] for i in range(0, len(events), 300)]
    victim = 1
    address = cluster.addresses[victim]
    errors: list[bucketly.BucketlyError] = []
    for number, batch in enumerate(rounds):
        for event in batch:
            try:
                client.send("clicks", event)
            except bucketly.BucketlyConnectionError as exc:
                errors.append(exc)  # the event stays buffered or kept to resend: not lost
        if number == 4:
            cluster.servers[victim].kill()  # batches in flight on it, or buffered for it
        if number == 7:
            cluster.restart(victim)
        try:
            client.flush()
        except bucketly.BucketlyConnectionError as exc:
            assert 4 <= number < 7
            assert exc.server == address and address in str(exc)  # type: ignore[attr-defined]
            errors.append(exc)
        if number == 5:
            with pytest.raises(bucketly.BucketlyConnectionError) as raised:
                client.view("clicks", "count")
            assert raised.value.server == address  # type: ignore[attr-defined]
            assert "needs every partition" in str(raised.value) and address in str(raised.value)
            partial = client.view_partial("clicks", "count")
            assert list(partial.missing) == [address]
            alive = [s for i, s in enumerate(cluster.servers) if i != victim]
            direct_counts = []
            for server in alive:
                with server.client() as direct:
                    direct_counts.append(direct.view("clicks", "count"))
            assert partial.value == sum(direct_counts)
    assert errors, "the killed server went unnoticed"
    client.flush()
    assert client.view("clicks", "count") == len(events)
    assert client.view_partial("clicks", "count").missing == {}
    users: dict[str, set[str]] = collections.defaultdict(set)
    for e in events:
        users[e["url"]].add(e["user"])
    assert client.dump("clicks") == {url: sorted(u) for url, u in users.items()}


def test_two_servers_route_too(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        cluster = Cluster(tmp_path, stack, 2)
        with bucketly.Client(servers=cluster.addresses, user="admin", password="admin") as c:
            c.create_bucket("clicks", "Clicks", partition_key="url")
            c.send_many("clicks", _events(1000))
            c.flush()
            assert c.view("clicks", "count") == 1000
            assert len(c.dump_partitions("clicks")) == 2


# -- bucketlyd --shards N --------------------------------------------------------------------


def _free_consecutive_ports(n: int) -> int:
    """A port p such that p .. p+n-1 are free now (a race with other programs is possible)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free consecutive ports")


def test_shards_start_serve_and_stop_in_order(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import threading

    base = _free_consecutive_ports(2)
    process = subprocess.Popen(
        [sys.executable, "-m", "bucketly.cli.daemon", str(tmp_path / "db.dat"),
         "--port", str(base), "--shards", "2", "--bucket-handlers", str(HANDLERS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    logs: list[str] = []
    reader = threading.Thread(target=lambda: logs.extend(process.stderr or ()), daemon=True)
    reader.start()
    try:
        line: list[str] = []
        waiter = threading.Thread(target=lambda: line.append(process.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        waiter.start()
        waiter.join(60)
        assert line and line[0].startswith("bucketlyd shards ready: "), (line, logs)
        servers = line[0].split(": ", 1)[1].strip().split(",")
        assert servers == [f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"]

        with bucketly.Client(servers=servers, user="admin", password="admin") as client:
            client.create_bucket("clicks", "Clicks", partition_key="url")
            client.send_many("clicks", _events(2000))
            client.flush()
            assert client.view("clicks", "count") == 2000
            assert all(n > 0 for n in (len(d) for d in client.dump_partitions("clicks").values()))
        assert (tmp_path / "db-0.dat").exists() and (tmp_path / "db-1.dat").exists()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(60)
        reader.join(10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    assert code == 0, logs
    text = "".join(logs)
    order = [text.index(marker) for marker in (
        "stopping shard 0", "shard 0 stopped", "stopping shard 1", "shard 1 stopped"
    )]
    assert order == sorted(order), text
    assert "[shard 0]" in text and "[shard 1]" in text
    for server in servers:  # nothing left listening
        with pytest.raises(bucketly.BucketlyConnectionError):
            bucketly.Client(*server.split(":")[:1], int(server.split(":")[1]), timeout=2)


def test_shards_need_a_port(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "bucketly.cli.daemon", str(tmp_path / "db.dat"),
         "--port", "0", "--shards", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == bucketly.errors.ConfigError.exit_code
    assert "--shards needs a --port" in result.stderr


def test_a_producer_with_send_only_routes_a_partitioned_bucket(cluster: Cluster) -> None:
    """Users live in each server's file: the routing client creates them on all; a sender
    that may not call bucket_info learns the partitioning from list_buckets."""
    with bucketly.Client(servers=cluster.addresses, user="admin", password="admin") as admin:
        admin.create_bucket("clicks", "Clicks", partition_key="url")
        admin.create_user("producer", "secret-password-1")
        admin.grant("producer", "send", "clicks")
        with bucketly.Client(
            servers=cluster.addresses, user="producer", password="secret-password-1"
        ) as producer:
            producer.send_many("clicks", _events(900))
            producer.flush()
            with pytest.raises(bucketly.PermissionDenied):
                producer.view("clicks", "count")
        assert admin.view("clicks", "count") == 900
        assert all(len(dump) > 0 for dump in admin.dump_partitions("clicks").values())
