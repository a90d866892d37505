"""Test helpers for users of bucketly: run a real bucketlyd for your handler tests.

::

    from bucketly.testing import run_server

    def test_my_handler(tmp_path):
        with run_server(handlers="myhandlers.py", database=tmp_path / "db.dat") as server:
            with server.client() as client:
                client.create_bucket("b", "MyHandler")
                client.send("b", {"x": 1})
                assert client.view("b", "total") == 1

The server is a real ``bucketlyd`` process on a free port of 127.0.0.1; ``run_server`` returns
once the server has logged that it is ready, and stops it (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .client import Client

__all__ = ["RunningServer", "run_server"]

_READY = re.compile(r"bucketlyd ready on (\S+):(\d+)")

#: Seconds to wait for the server to say it is ready, or to exit once told to stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class RunningServer:
    """A bucketlyd subprocess. ``host``, ``port``, ``pid``; ``logs`` holds its log lines."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.args = args
        self.process = subprocess.Popen(
            args,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.pid = self.process.pid
        self.logs: list[str] = []
        self.host = ""
        self.port = 0
        self._ready = threading.Event()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()

    def _read_logs(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.logs.append(line.rstrip("\n"))
                match = _READY.search(line)
                if match and not self._ready.is_set():
                    self.host, self.port = match.group(1), int(match.group(2))
                    self._ready.set()
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()
        self._ready.set()  # the process ended: wake whoever waits for readiness

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        if not self._ready.wait(timeout) or not self.port:
            self.kill()
            raise RuntimeError("bucketlyd did not become ready:\n" + "\n".join(self.logs[-30:]))

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> str:
        """Block until a log line matches the regular expression ``pattern``; return it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = 0
            while True:
                for line in self.logs[seen:]:
                    if regex.search(line):
                        return line
                seen = len(self.logs)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.process.poll() is not None and not self._reader.is_alive()
                ):
                    raise AssertionError(
                        f"no log line matched {pattern!r}; last lines:\n"
                        + "\n".join(self.logs[-20:])
                    )
                self._changed.wait(remaining)

    def client(
        self, user: str | None = "admin", password: str | None = "admin", **kwargs: Any
    ) -> Client:
        """A ``Client`` connected to this server (as admin/admin unless told otherwise)."""
        return Client(self.host, self.port, user=user, password=password, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for the exit status (killing the process after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up (crash tests)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


def bucketlyd_command(
    database: str | os.PathLike[str],
    handlers: str | os.PathLike[str] | None = None,
    port: int = 0,
    extra_args: list[str] | tuple[str, ...] = (),
) -> list[str]:
    args = [sys.executable, "-m", "bucketly.cli.daemon", str(database), "--port", str(port)]
    if handlers is not None:
        args += ["--bucket-handlers", str(handlers)]
    return args + list(extra_args)


@contextmanager
def run_server(
    handlers: str | os.PathLike[str] | None = None,
    database: str | os.PathLike[str] | None = None,
    *,
    extra_args: list[str] | tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Start a real bucketlyd on a free port; yield it once ready; stop it on exit.

    ``database`` defaults to a new file in a temporary directory. ``extra_args`` are more
    bucketlyd flags. On exit the server gets SIGTERM and must exit; if it is still running
    after ``STOP_TIMEOUT`` seconds it is killed and an error raised.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bucketly-") as tmp:
        db = Path(database) if database is not None else Path(tmp) / "bucketly.dat"
        server = RunningServer(bucketlyd_command(db, handlers, 0, extra_args), env=env)
        try:
            server.wait_ready()
            yield server
        finally:
            if server.returncode is None:
                server.stop()
            else:
                server.kill()
