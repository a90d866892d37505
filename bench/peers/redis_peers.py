"""Redis, driven the way a Python user would, and measured at its own ceiling.

The suite starts a private ``redis-server`` on a free port (no persistence) so that it can
``FLUSHALL`` between runs and read ``INFO memory`` without other tenants in it; ``--redis-url``
points it at an existing server instead, where it touches only keys under ``KEY_PREFIX`` and
deletes them after each run.

- ``pipelined``: redis-py, pipelines of ``PIPELINE`` ``SADD url user`` (no MULTI), then the
  ``SCARD`` of every url checked against the truth. Also yields ``used_memory`` per unique pair.
- ``single``: redis-py, one acknowledged ``SADD`` per event, on the first ``SINGLE_EVENTS``.
- ``redis-benchmark -P 100 -t sadd``: the server's own pipelined ceiling (C client, 50 conns).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Processes, RunFailed, free_port, wait_for_port
from bench.workload import Workload

KEY_PREFIX = "bench:bucketly:"
PIPELINE = 1_000
#: Events sent one acknowledged SADD at a time: a round trip each, so a subset suffices.
SINGLE_EVENTS = 20_000
BENCHMARK_PIPELINE = 100


@dataclass(frozen=True, slots=True)
class RedisTarget:
    host: str
    port: int
    #: True when the suite owns the server and may FLUSHALL it.
    private: bool

    def options(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "private": self.private}


def start_private_redis(procs: Processes) -> RedisTarget:
    if shutil.which("redis-server") is None:
        raise RunFailed("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = procs.start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return RedisTarget("127.0.0.1", port, private=True)


def redis_version(target: RedisTarget) -> str:
    import redis

    client = redis.Redis(target.host, target.port)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def benchmark_run(target: RedisTarget, requests: int) -> dict[str, Any]:
    """redis-benchmark's pipelined SADD: the server's ceiling for this command."""
    import redis

    if shutil.which("redis-benchmark") is None:
        raise RunFailed("redis-benchmark is not installed")
    # The same shape as the built-in "-t sadd" test (one set, random members), under our prefix.
    key = f"{KEY_PREFIX}redis-benchmark"
    cmd = ["redis-benchmark", "-h", target.host, "-p", str(target.port), "-n", str(requests),
           "-P", str(BENCHMARK_PIPELINE), "-r", "100000", "--csv", "sadd", key,
           "element:__rand_int__"]
    client = redis.Redis(target.host, target.port)
    cpu_before = _server_cpu(client)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    cpu = _server_cpu(client) - cpu_before
    client.close()
    # --csv prints a header then '"SADD ...","<rps>",...'.
    match = re.search(r'^"[^"]*","([\d.]+)"', out, re.MULTILINE)
    if match is None:
        raise RunFailed(f"cannot read redis-benchmark output: {out[-200:]!r}")
    _cleanup(target)
    return {"rate": float(match.group(1)), "events": requests, "server_cpu": cpu}


# -- drivers -------------------------------------------------------------------------------


def _connect(opts: dict[str, Any]) -> Any:
    import redis

    return redis.Redis(opts["host"], opts["port"])


def _cleanup(target: RedisTarget | dict[str, Any]) -> None:
    import redis

    opts = target.options() if isinstance(target, RedisTarget) else target
    client = redis.Redis(opts["host"], opts["port"])
    try:
        if opts["private"]:
            client.flushall()
        else:
            keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=10_000))
            for i in range(0, len(keys), 10_000):
                client.delete(*keys[i : i + 10_000])
    finally:
        client.close()


def _check(client: Any, workload: Workload, limit: int | None = None) -> int:
    truth = workload.truth if limit is None else workload.truth_for(limit)
    pipe = client.pipeline(transaction=False)
    urls = list(truth.per_url)
    for url in urls:
        pipe.scard(KEY_PREFIX + url)
    per_url = dict(zip(urls, pipe.execute(), strict=True))
    truth.check(sum(per_url.values()), per_url)
    # Nothing outside the truth's urls: the SCARD of every other url must be 0.
    pipe = client.pipeline(transaction=False)
    for url in workload.url_names:
        if url not in truth.per_url:
            pipe.scard(KEY_PREFIX + url)
    if any(pipe.execute()):
        raise RunFailed("redis holds users for urls that got no event")
    return truth.unique_pairs


def _server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drive_pipelined(opts: dict[str, Any]) -> dict[str, Any]:
    workload = Workload.load(opts["workload"])
    events = workload.events()
    client = _connect(opts)
    _cleanup(opts)
    used_before = int(client.info("memory")["used_memory"])
    prefix = KEY_PREFIX
    cpu_before = _server_cpu(client)
    start = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for i, event in enumerate(events, 1):
        pipe.sadd(prefix + event["url"], event["user"])
        if i % PIPELINE == 0:
            pipe.execute()
    pipe.execute()
    seconds = time.perf_counter() - start
    cpu = _server_cpu(client) - cpu_before
    used_after = int(client.info("memory")["used_memory"])
    pairs = _check(client, workload)
    _cleanup(opts)
    return {"events": len(events), "seconds": seconds, "rate": len(events) / seconds,
            "server_cpu": cpu, "memory_delta": used_after - used_before, "unique_pairs": pairs}


def drive_single(opts: dict[str, Any]) -> dict[str, Any]:
    workload = Workload.load(opts["workload"])
    n = min(opts.get("events", SINGLE_EVENTS), workload.truth.events)
    events = workload.events(n)
    client = _connect(opts)
    _cleanup(opts)
    prefix = KEY_PREFIX
    cpu_before = _server_cpu(client)
    start = time.perf_counter()
    for event in events:
        client.sadd(prefix + event["url"], event["user"])
    seconds = time.perf_counter() - start
    cpu = _server_cpu(client) - cpu_before
    _check(client, workload, n)
    _cleanup(opts)
    return {"events": n, "seconds": seconds, "rate": n / seconds, "server_cpu": cpu}


def drive_ingest(opts: dict[str, Any]) -> dict[str, Any]:
    """Pipelined SADD paced at ``rate`` events/s until ``stop_file`` exists (view latency)."""
    workload = Workload.load(opts["workload"])
    events = workload.events()
    client = _connect(opts)
    client.ping()
    Path(opts["started_file"]).touch()
    prefix, rate = KEY_PREFIX, opts["rate"]
    start = time.perf_counter()
    deadline = start + opts["duration"]
    stop = Path(opts["stop_file"])
    sent = 0
    pipe = client.pipeline(transaction=False)
    while time.perf_counter() < deadline and not stop.exists():
        ahead = start + sent / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
        for event in events[sent % len(events) : sent % len(events) + PIPELINE]:
            pipe.sadd(prefix + event["url"], event["user"])
        sent += len(pipe)
        pipe.execute()
    seconds = time.perf_counter() - start
    return {"events": sent, "seconds": seconds, "rate": sent / seconds}


def drive_view(opts: dict[str, Any]) -> dict[str, Any]:
    """``SCARD url`` one at a time on one connection: Redis's equivalent of the count view."""
    workload = Workload.load(opts["workload"])
    urls = [KEY_PREFIX + u for u in workload.url_names]
    client = _connect(opts)
    client.ping()
    latencies: list[float] = []
    deadline = time.perf_counter() + opts["duration"]
    while time.perf_counter() < deadline and len(latencies) < opts["max_views"]:
        start = time.perf_counter()
        client.scard(urls[len(latencies) % len(urls)])
        latencies.append(time.perf_counter() - start)
        time.sleep(opts.get("pause", 0.001))
    return {"latencies": latencies}


def cleanup(target: RedisTarget) -> None:
    _cleanup(target)
