"""View latency: p50 / p99 of a view on one connection while another ingests at 80% of the max.

The ingest driver and the view driver are separate processes (a slow view client must not slow
ingestion, nor the reverse). The ingester says it has started by creating a file; after
``RAMP_SECONDS`` the viewer makes one view at a time, ``VIEW_PAUSE`` apart, for ``seconds`` or
``MAX_VIEWS`` views; then a second file tells the ingester to stop, so ingestion covers every
view however slowly the processes start.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import Processes, RunFailed, finish_driver, run_driver, start_driver

#: Share of the measured maximum ingest rate kept up during the view-latency test.
INGEST_SHARE = 0.8
VIEW_PAUSE = 0.001
MAX_VIEWS = 10_000
#: Ingestion starts at least this long before the first view.
RAMP_SECONDS = 0.3
START_TIMEOUT_SECONDS = 60.0
#: Bound on an ingester that is never told to stop.
INGEST_LIMIT_SECONDS = 120.0


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency_run(procs: Processes, target: Callable[[], contextlib.AbstractContextManager[Any]],
                ingest_kind: str, view_kind: str, workload: str, rate: float,
                seconds: float) -> dict[str, Any]:
    """One run: ``target()`` yields the connection options of a fresh server."""
    with target() as options, tempfile.TemporaryDirectory(prefix="bucketly-bench-") as tmp:
        started, stop = Path(tmp) / "started", Path(tmp) / "stop"
        ingest = start_driver(procs, ingest_kind, workload=workload, rate=rate,
                              duration=INGEST_LIMIT_SECONDS, started_file=str(started),
                              stop_file=str(stop), **options)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not started.exists():
            if ingest.poll() is not None or time.monotonic() > deadline:
                finish_driver(procs, ingest, ingest_kind, timeout=5)
                raise RunFailed(f"{ingest_kind} did not start")
            time.sleep(0.02)
        time.sleep(RAMP_SECONDS)
        try:
            view = run_driver(procs, view_kind, workload=workload, duration=seconds,
                              max_views=MAX_VIEWS, pause=VIEW_PAUSE, **options)
        finally:
            stop.touch()
        ingested = finish_driver(procs, ingest, ingest_kind, timeout=INGEST_LIMIT_SECONDS + 60)
    latencies = sorted(view["latencies"])
    if not latencies:
        raise RunFailed("no view completed")
    return {"p50_ms": 1e3 * percentile(latencies, 0.50),
            "p99_ms": 1e3 * percentile(latencies, 0.99), "views": len(latencies),
            "target_rate": rate, "ingest_rate": ingested["rate"]}
