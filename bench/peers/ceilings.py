"""The ceilings: what Python reaches with no daemon around the handler.

- in-process: the handler (``UniqueClicks`` unless told otherwise) fed the decoded batches
  with no network (``handler``), and the same with the MessagePack decoding of each frame body
  included (``decode``);
- bare server: ``bare_server.py`` in a subprocess, fed the same pre-encoded frames over 1 or 8
  connections, with CPython's default GC and with the GC tuned like an ingestion daemon.

The ``drive_*`` functions run inside driver subprocesses (see ``bench.harness``); ``bare_run``
and ``bare_latency`` run in the orchestrator and start the servers and drivers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import ormsgpack

from bench.handlers import DEFAULT, HANDLERS
from bench.harness import (
    PYTHON,
    REPO,
    Processes,
    RunFailed,
    apply_gc_mode,
    cpu_seconds,
    free_port,
    python_env,
    rss_bytes,
    run_driver,
    wait_for_port,
)
from bench.peers import frames_client
from bench.workload import BATCH, Workload

_UNPACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS


# -- drivers (run in a fresh subprocess each) ------------------------------------------------


def drive_inprocess(opts: dict[str, Any]) -> dict[str, Any]:
    """Feed the handler every batch in this process. ``mode``: ``handler`` or ``decode``."""
    workload = Workload.load(opts["workload"])
    bodies = workload.frame_bodies()
    unpackb = ormsgpack.unpackb
    decoded = None
    if opts["mode"] == "handler":
        decoded = [unpackb(b, option=_UNPACK_OPTIONS)["events"] for b in bodies]
    handler = HANDLERS[opts.get("handler", DEFAULT)]({})
    apply_gc_mode(opts.get("gc", "default"))
    rss_before = rss_bytes(os.getpid())
    on_events = handler.on_events
    cpu_before = time.process_time()
    start = time.perf_counter()
    if decoded is not None:
        for events in decoded:
            on_events(events)
    else:
        for body in bodies:
            on_events(unpackb(body, option=_UNPACK_OPTIONS)["events"])
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu_before
    rss_delta = rss_bytes(os.getpid()) - rss_before
    totals = handler.totals()
    workload.truth.check(totals["unique_pairs"], totals["per_url"])
    result = {"events": workload.truth.events, "seconds": seconds,
              "rate": workload.truth.events / seconds, "server_cpu": cpu}
    if decoded is None:
        # Only here do the user strings come from decoding, as in a daemon: a fair memory figure.
        result["rss_delta"] = rss_delta
        result["unique_pairs"] = totals["unique_pairs"]
    return result


def drive_bare_feed(opts: dict[str, Any]) -> dict[str, Any]:
    """Send the workload's frames to a bare server at ``port``, then check its totals."""
    workload = Workload.load(opts["workload"])
    frames = workload.frames()
    sizes = [min(BATCH, workload.truth.events - i * BATCH) for i in range(len(frames))]

    async def go() -> tuple[int, float, float, dict[str, Any]]:
        cpu_before = cpu_seconds(opts["server_pid"])
        events, seconds = await frames_client.feed(
            opts["port"], frames, sizes, connections=opts["connections"],
            window=opts.get("window", frames_client.DEFAULT_WINDOW))
        cpu = cpu_seconds(opts["server_pid"]) - cpu_before
        stats = await frames_client.request(opts["port"], {"id": 0, "op": "stats"})
        return events, seconds, cpu, stats

    events, seconds, cpu, stats = asyncio.run(go())
    if events != workload.truth.events:
        raise RunFailed(f"{events} events acknowledged, {workload.truth.events} sent")
    workload.truth.check(stats["unique_pairs"], stats["per_url"])
    return {"events": events, "seconds": seconds, "rate": events / seconds,
            "server_cpu": cpu, "rss_delta": stats["rss_delta"],
            "unique_pairs": stats["unique_pairs"]}


def drive_bare_ingest(opts: dict[str, Any]) -> dict[str, Any]:
    """Paced ingestion for the view-latency test: ``rate`` events/s until told to stop."""
    workload = Workload.load(opts["workload"])
    frames = workload.frames()
    sizes = [min(BATCH, workload.truth.events - i * BATCH) for i in range(len(frames))]
    Path(opts["started_file"]).touch()
    events, seconds = asyncio.run(frames_client.feed(
        opts["port"], frames, sizes, connections=opts["connections"], rate=opts["rate"],
        duration=opts["duration"], stop_file=Path(opts["stop_file"])))
    return {"events": events, "seconds": seconds, "rate": events / seconds}


def drive_bare_view(opts: dict[str, Any]) -> dict[str, Any]:
    """Views one at a time on one connection, for ``duration`` s or ``max_views`` views."""
    workload = Workload.load(opts["workload"])
    urls = workload.url_names

    async def go() -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", opts["port"])
        latencies: list[float] = []
        deadline = time.perf_counter() + opts["duration"]
        try:
            while time.perf_counter() < deadline and len(latencies) < opts["max_views"]:
                n = len(latencies)
                body = ormsgpack.packb({"id": n + 1, "op": "view", "bucket": "clicks",
                                        "name": "count", "url": urls[n % len(urls)]})
                start = time.perf_counter()
                writer.write(len(body).to_bytes(4, "big") + body)
                await frames_client.read_reply(reader)
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(opts.get("pause", 0.001))
        finally:
            writer.close()
        return latencies

    return {"latencies": asyncio.run(go())}


# -- orchestration -------------------------------------------------------------------------


def start_bare_server(procs: Processes, gc_mode: str, handler: str = DEFAULT
                      ) -> tuple[subprocess.Popen[Any], int]:
    port = free_port()
    proc = procs.start(
        [PYTHON, "-m", "bench.peers.bare_server", "--port", str(port), "--gc", gc_mode,
         "--handler", handler],
        cwd=REPO, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    wait_for_port(port, proc)
    return proc, port


def bare_run(procs: Processes, workload: str, connections: int, gc_mode: str,
             handler: str = DEFAULT) -> dict[str, Any]:
    """One throughput run against a fresh bare server."""
    proc, port = start_bare_server(procs, gc_mode, handler)
    try:
        return run_driver(procs, "bare-feed", workload=workload, port=port,
                          connections=connections, server_pid=proc.pid)
    finally:
        code = procs.stop(proc)
        if code not in (0, None):
            raise RunFailed(f"bare server exited with {code}")


def inprocess_run(procs: Processes, workload: str, mode: str, gc_mode: str,
                  handler: str = DEFAULT) -> dict[str, Any]:
    return run_driver(procs, "inprocess", workload=workload, mode=mode, gc=gc_mode,
                      handler=handler)
