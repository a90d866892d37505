"""``bucketlyd --shards N``: N independent servers on one host, one per core, under one parent.

Theory of operation. The parent runs no server itself. It starts N ``bucketlyd`` child
processes with the parent's own settings but for three: shard ``i`` listens on ``port + i``,
keeps its own database file (``NAME-i.EXT`` next to the one given), and, when metrics are on,
serves them on the metrics port ``+ i``. The children share nothing (docs/scaling.md): a client
given the server list routes among them. The parent forwards each child's log lines, prefixed
with its shard, prints the server list on stdout once every child is ready, and waits.

SIGTERM or SIGINT stops the children in order, shard 0 first, each one's own graceful shutdown
(final job runs included) finished before the next is told: the same as N ``systemctl stop``s.
A child that exits by itself stops the others the same way and the parent exits with its
status, so a supervisor above it (systemd) sees the failure. Children run in their own session,
so a Ctrl-C in a terminal reaches the parent alone, which stops them in order.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .config import ServerConfig  # which imports this module's defaults

__all__ = ["DEFAULT_SHARDS", "MAX_SHARDS", "run_shards", "shard_configs"]

log = logging.getLogger("bucketly.shards")

#: One server unless told: a single bucketlyd uses one core, and splitting buckets over several
#: is a choice that changes how clients connect (docs/scaling.md).
DEFAULT_SHARDS = 1
#: More shards than this is a mistake (a typo, not a machine with that many cores): each is a
#: process with its own memory, port and database file.
MAX_SHARDS = 256
#: Seconds a child has to say it is ready before the start is given up.
SHARD_START_TIMEOUT = 60.0

_READY = re.compile(r"bucketlyd ready on (\S+):(\d+)")


def shard_configs(config: ServerConfig) -> list[ServerConfig]:
    """The configuration of each shard of ``config`` (whose ``shards`` is > 1)."""
    n = config.shards
    if not 1 <= n <= MAX_SHARDS:
        raise ConfigError(f"--shards must be between 1 and {MAX_SHARDS}, not {n}")
    if config.port == 0:
        raise ConfigError("--shards needs a --port: the shards listen on consecutive ports")
    if config.port + n - 1 > 65535:
        raise ConfigError(f"--shards {n} from port {config.port} goes past port 65535")
    database = Path(config.database)
    metrics_host, metrics_port = None, 0
    if config.metrics_address is not None:
        metrics_host, _, port = config.metrics_address.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            raise ConfigError("--shards needs a fixed --metrics-address port (one per shard)")
        metrics_port = int(port)
    return [
        config.replace(
            shards=1,
            port=config.port + i,
            database=str(database.with_name(f"{database.stem}-{i}{database.suffix}")),
            metrics_address=(
                None if metrics_host is None else f"{metrics_host}:{metrics_port + i}"
            ),
        )
        for i in range(n)
    ]


def _argv(config: ServerConfig) -> list[str]:
    """The ``bucketlyd`` command line that gives ``config`` (every setting spelt out)."""
    args = [sys.executable, "-m", "bucketly.cli.daemon", config.database]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.metadata.get("positional") or value is None:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            if value:
                args.append(flag)
            continue
        args += [flag, str(value)]
    return args


class _Shard:
    def __init__(self, index: int, config: ServerConfig) -> None:
        self.index = index
        self.config = config
        self.ready = threading.Event()
        self.address: str | None = None
        self.process = subprocess.Popen(
            _argv(config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._forwarder = threading.Thread(target=self._forward, daemon=True)
        self._forwarder.start()

    def _forward(self, out: IO[str] = sys.stderr) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            out.write(f"[shard {self.index}] {line}")
            out.flush()
            match = _READY.search(line)
            if match and not self.ready.is_set():
                self.address = f"{match.group(1)}:{match.group(2)}"
                self.ready.set()
        self.ready.set()  # it ended: whoever waits for it must look

    def stop(self, timeout: float) -> int:
        """SIGTERM, and wait for its graceful exit (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            log.info("stopping shard %d (pid %d)", self.index, self.process.pid)
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("shard %d did not stop within %.0fs: killing it", self.index, timeout)
            self.process.kill()
            code = self.process.wait()
        self._forwarder.join(5)
        log.info("shard %d stopped (exit status %d)", self.index, code)
        return code


def _wake_on_exit(shard: _Shard, wake: threading.Event) -> None:
    shard.process.wait()
    wake.set()


def run_shards(config: ServerConfig) -> int:
    """Run ``config.shards`` servers until SIGTERM / SIGINT (or one exits); the exit status."""
    configs = shard_configs(config)
    wake = threading.Event()
    stopping: dict[str, Any] = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        stopping["signal"] = signal.Signals(signum).name
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    shards: list[_Shard] = []
    status = 0
    try:
        for index, shard_config in enumerate(configs):
            shards.append(_Shard(index, shard_config))
        for shard in shards:
            if not shard.ready.wait(SHARD_START_TIMEOUT) or shard.process.poll() is not None:
                status = shard.process.poll() or 1
                log.error("shard %d did not start (see its log above)", shard.index)
                return status
            if wake.is_set():
                return 0
        servers = ",".join(s.address or "" for s in shards)
        # The line clients need: Client(servers=...), BUCKETLY_SERVERS, a profile's servers.
        print(f"bucketlyd shards ready: {servers}", flush=True)
        log.info("%d shards ready: %s", len(shards), servers)
        for shard in shards:
            threading.Thread(target=_wake_on_exit, args=(shard, wake), daemon=True).start()
        wake.wait()
        for shard in shards:
            code = shard.process.poll()
            if code is not None and stopping["signal"] is None:
                log.error("shard %d exited by itself (status %d): stopping the others",
                          shard.index, code)
                status = code or 1
                break
        else:
            log.info("%s: stopping %d shards in order", stopping["signal"], len(shards))
        return status
    finally:
        for shard in shards:
            shard.stop(config.shutdown_timeout + 10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
