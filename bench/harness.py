"""Processes, ports and drivers: the plumbing every runner shares.

Theory of operation: the orchestrator (``run.py``) never measures in its own process, which holds
the workloads and the results and so would skew garbage collection. Each measured client runs as a
*driver*: a fresh ``python -m bench.drive KIND`` subprocess that loads the workload, builds what it
sends (outside the timed section), runs, checks its count against the truth, and prints one JSON
line. Servers (redis-server, statsd, the bare asyncio server, bucketlyd) are subprocesses too.

Every process the suite starts is registered with a ``Processes`` group, started in its own
session so that its children can be signalled with it, and stopped when the group closes (on
success, error or Ctrl-C): SIGTERM, then SIGKILL after ``STOP_GRACE_SECONDS``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

#: How long a stopped server gets to exit after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 5.0
#: How long a server gets to start listening.
START_TIMEOUT_SECONDS = 20.0
#: Upper bound on one driver run; a run that takes longer has hung and fails.
DRIVER_TIMEOUT_SECONDS = 300.0


#: GC settings of a daemon tuned for ingestion, the same as bucketlyd's (``--gc-threshold``):
#: everything alive at start-up is frozen out of the collector, and young collections run every
#: 50,000 net allocations instead of 700, so one batch of decoded events does not trigger several.
TUNED_GC_THRESHOLD = (50_000, 10, 10)
GC_MODES = ("default", "tuned")


def apply_gc_mode(mode: str) -> None:
    """``default``: CPython's settings. ``tuned``: see ``TUNED_GC_THRESHOLD``. ``off``: disabled."""
    if mode == "default":
        return
    gc.collect()
    gc.freeze()
    if mode == "tuned":
        gc.set_threshold(*TUNED_GC_THRESHOLD)
    elif mode == "off":
        gc.disable()
    else:
        raise ValueError(f"unknown gc mode {mode!r}")


class RunFailed(RuntimeError):
    """One run of one measurement failed (miscount, crash, timeout): it yields no number."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[Any] | None = None,
                  timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RunFailed(f"{proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RunFailed(f"nothing listening on port {port} after {timeout:.0f} s")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set size a process has had (``VmHWM``), from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(REPO / "src"), env.get("PYTHONPATH", "")) if p
    )
    env.pop("PYTHONSTARTUP", None)
    return env


class Processes:
    """Every subprocess the suite starts, stopped together when the group closes."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(list(cmd), **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> int | None:
        """Signal ``proc`` (and its process group), wait, kill if it lingers. Returns its code."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_GRACE_SECONDS)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def start_driver(procs: Processes, kind: str, **options: Any) -> subprocess.Popen[Any]:
    """Start ``python -m bench.drive KIND`` with ``options``; ``finish_driver`` collects it."""
    return procs.start(
        [PYTHON, "-m", "bench.drive", kind, json.dumps(options)],
        cwd=REPO, env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run_driver(procs: Processes, kind: str, timeout: float = DRIVER_TIMEOUT_SECONDS,
               **options: Any) -> dict[str, Any]:
    """Run ``python -m bench.drive KIND`` with ``options`` and return the JSON it prints."""
    return finish_driver(procs, start_driver(procs, kind, **options), kind, timeout)


def finish_driver(procs: Processes, proc: subprocess.Popen[Any], kind: str,
                  timeout: float = DRIVER_TIMEOUT_SECONDS) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc, signal.SIGKILL)
        raise RunFailed(f"driver {kind} did not finish in {timeout:.0f} s") from None
    procs.stop(proc)
    if proc.returncode != 0:
        lines = (err or "").strip().splitlines()
        raise RunFailed(f"driver {kind} failed: {lines[-1] if lines else proc.returncode}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def print_result(result: dict[str, Any]) -> None:
    """Called by drivers: the last line of stdout is the result."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
