"""bucketly itself, through its public Python client, against a real daemon.

Each run starts a fresh ``bucketlyd`` with ``bucketly.testing.run_server`` (handlers module
``bench/handlers.py``, a new database file), and a driver subprocess that connects with
``bucketly.Client(host, port, user="admin", password="admin")``, creates the bucket, sends the
workload and checks the ``totals`` view against the truth.

Modes:

- ``batched``: ``client.send(bucket, event)`` for every event (buffered into batches by the
  client), ``client.flush()`` at the end; over 1 connection, or ``connections`` connections from
  as many threads, each sending its share of the events.
- ``single``: ``send`` then ``flush`` for each event, i.e. one acknowledged round trip per event,
  on the first ``SINGLE_EVENTS`` events (the comparison with redis-py without a pipeline).

``durable=True`` creates the bucket with ``durable=True``. ``metrics=True`` starts the server
with ``--metrics-address`` and scrapes its ``/metrics`` every second for the whole run, from a
thread of the suite's process (as Prometheus would, from outside the driver). The server's
resident memory is read before and after the run, for the memory per unique pair.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.handlers import DEFAULT as DEFAULT_HANDLER
from bench.harness import REPO, Processes, RunFailed, cpu_seconds, rss_bytes, run_driver
from bench.workload import BUCKET, Workload

HANDLERS = REPO / "bench" / "handlers.py"
HANDLER_CLASS = DEFAULT_HANDLER
SINGLE_EVENTS = 20_000
#: Seconds between two scrapes of ``/metrics`` in a ``metrics=True`` run: Prometheus's most
#: frequent usual interval is 15 s; once a second is the issue's worst case.
SCRAPE_INTERVAL = 1.0


def available() -> str | None:
    """``None`` if bucketly's client and test server can be used, else why not."""
    try:
        import bucketly
        from bucketly.testing import run_server  # noqa: F401
    except ImportError as exc:
        return f"bucketly client / testing not importable: {exc}"
    if not hasattr(bucketly, "Client"):
        return "bucketly.Client does not exist yet"
    return None


def version() -> str:
    import bucketly

    return str(getattr(bucketly, "__version__", "?"))


@contextlib.contextmanager
def server(extra_args: list[str] | tuple[str, ...] = (),
           metrics_port: int | None = None) -> Iterator[Any]:
    """A fresh bucketlyd on a free port with the benchmark's handlers and a new database
    (``extra_args``: more bucketlyd flags; its metrics endpoint on ``metrics_port``, if
    given)."""
    from bucketly.testing import run_server

    extra = [] if metrics_port is None else ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    with tempfile.TemporaryDirectory(prefix="bucketly-bench-") as tmp, run_server(
        handlers=HANDLERS, database=Path(tmp) / "bench.dat", extra_args=[*extra_args, *extra]
    ) as running:
        yield running


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _scraping(port: int) -> Iterator[list[int]]:
    """Scrape ``http://127.0.0.1:port/metrics`` now and then every ``SCRAPE_INTERVAL`` until
    the block ends; yields a one-item list: the scrapes done."""
    done = [0]
    stop = threading.Event()
    failed: list[BaseException] = []

    def scrape() -> None:
        try:
            while True:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as response:
                    response.read()
                done[0] += 1
                if stop.wait(SCRAPE_INTERVAL):
                    return
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=scrape, name="scraper", daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(15)
    if failed:
        raise RunFailed(f"scraping /metrics failed: {failed[0]!r}")


def server_options(running: Any) -> dict[str, Any]:
    return {"host": running.host, "port": running.port, "server_pid": running.pid}


def bucketly_run(procs: Processes, workload: str, mode: str = "batched", connections: int = 1,
                 durable: bool = False, handler: str = DEFAULT_HANDLER,
                 persistence: str | None = None,
                 snapshot_interval: float | None = None,
                 server_args: list[str] | tuple[str, ...] = (),
                 metrics: bool = False) -> dict[str, Any]:
    """One throughput run against a fresh server. ``persistence`` and ``snapshot_interval``
    are the bucket's (``persistence`` overrides ``durable``); ``server_args`` are more
    bucketlyd flags; ``metrics``: its /metrics scraped every second. The result's
    ``server_stats`` is the server's ``stats`` after the run."""
    metrics_port = _free_port() if metrics else None
    with server(server_args, metrics_port) as running:
        rss_before = rss_bytes(running.pid)
        with _scraping(metrics_port) if metrics_port is not None else (
            contextlib.nullcontext([0])
        ) as scrapes:
            result = run_driver(procs, "bucketly-send", workload=workload, mode=mode,
                                connections=connections, durable=durable, handler=handler,
                                persistence=persistence, snapshot_interval=snapshot_interval,
                                **server_options(running))
        result["rss_delta"] = rss_bytes(running.pid) - rss_before
        if metrics:
            if not scrapes[0]:
                raise RunFailed("/metrics was never scraped during the run")
            result["scrapes"] = scrapes[0]
        if running.returncode is not None:
            raise RunFailed(f"bucketlyd exited with {running.returncode} during the run")
        with running.client() as client:
            result["server_stats"] = client.stats()
            result["bucket_info"] = client.bucket_info(BUCKET)
    return result


# -- drivers (run in a fresh subprocess each) ------------------------------------------------


def _client(opts: dict[str, Any]) -> Any:
    import bucketly

    return bucketly.Client(opts["host"], opts["port"], user="admin", password="admin")


def _create_bucket(opts: dict[str, Any]) -> None:
    with _client(opts) as client:
        client.create_bucket(BUCKET, opts.get("handler", HANDLER_CLASS), config={},
                             durable=opts.get("durable", False),
                             persistence=opts.get("persistence"),
                             snapshot_interval=opts.get("snapshot_interval"))


def _check(opts: dict[str, Any], truth: Any) -> int:
    with _client(opts) as client:
        totals = client.view(BUCKET, "totals")
    truth.check(totals["unique_pairs"], totals["per_url"])
    return int(totals["unique_pairs"])


def drive_send(opts: dict[str, Any]) -> dict[str, Any]:
    workload = Workload.load(opts["workload"])
    _create_bucket(opts)
    if opts["mode"] == "single":
        n = min(opts.get("events", SINGLE_EVENTS), workload.truth.events)
        events = workload.events(n)
        truth = workload.truth_for(n)
        with _client(opts) as client:
            cpu_before = cpu_seconds(opts["server_pid"])
            start = time.perf_counter()
            for event in events:
                client.send(BUCKET, event)
                client.flush()
            seconds = time.perf_counter() - start
            cpu = cpu_seconds(opts["server_pid"]) - cpu_before
    else:
        events = workload.events()
        truth = workload.truth
        n = len(events)
        k = opts["connections"]
        clients = [_client(opts) for _ in range(k)]
        try:
            cpu_before = cpu_seconds(opts["server_pid"])
            if k == 1:
                send, client = clients[0].send, clients[0]
                start = time.perf_counter()
                for event in events:
                    send(BUCKET, event)
                client.flush()
                seconds = time.perf_counter() - start
            else:
                seconds = _send_threads(clients, [events[i::k] for i in range(k)])
            cpu = cpu_seconds(opts["server_pid"]) - cpu_before
        finally:
            for client in clients:
                client.close()
    pairs = _check(opts, truth)
    return {"events": n, "seconds": seconds, "rate": n / seconds, "server_cpu": cpu,
            "unique_pairs": pairs}


def _send_threads(clients: list[Any], shares: list[list[Any]]) -> float:
    errors: list[BaseException] = []
    go = threading.Barrier(len(clients) + 1)

    def work(client: Any, share: list[Any]) -> None:
        try:
            go.wait()
            send = client.send
            for event in share:
                send(BUCKET, event)
            client.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(clients, shares,
                                                                        strict=True)]
    for thread in threads:
        thread.start()
    go.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


def drive_ingest(opts: dict[str, Any]) -> dict[str, Any]:
    """Paced ``send``s at ``rate`` events/s until ``stop_file`` exists (view latency)."""
    workload = Workload.load(opts["workload"])
    events = workload.events()
    _create_bucket(opts)
    rate, step = float(opts["rate"]), 1_000
    sent = 0
    with _client(opts) as client:
        Path(opts["started_file"]).touch()
        start = time.perf_counter()
        deadline = start + opts["duration"]
        stop = Path(opts["stop_file"])
        while time.perf_counter() < deadline and not stop.exists():
            ahead = start + sent / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            i = sent % len(events)
            for event in events[i : i + step]:
                client.send(BUCKET, event)
            sent += len(events[i : i + step])
        client.flush()
        seconds = time.perf_counter() - start
    return {"events": sent, "seconds": seconds, "rate": sent / seconds}


def drive_view(opts: dict[str, Any]) -> dict[str, Any]:
    """``client.view(bucket, "count", url=...)`` one at a time on its own connection."""
    workload = Workload.load(opts["workload"])
    urls = workload.url_names
    latencies: list[float] = []
    with _client(opts) as client:
        client.ping()
        deadline = time.perf_counter() + opts["duration"]
        while time.perf_counter() < deadline and len(latencies) < opts["max_views"]:
            start = time.perf_counter()
            client.view(BUCKET, "count", url=urls[len(latencies) % len(urls)])
            latencies.append(time.perf_counter() - start)
            time.sleep(opts.get("pause", 0.001))
    return {"latencies": latencies}
