"""``Server``: start-up, the listener, and an orderly shutdown.

Start-up: load the handlers module, open (or create) the database file, rebuild every bucket from
its definition, tune the garbage collector, listen, log ``ready``. Shutdown on SIGTERM / SIGINT,
each step logged: stop accepting, finish in-flight requests, close connections, stop scheduled
jobs and run each one a final time, close the database file, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import __version__
from ..buckets import Bucket
from ..handlers import HandlerInfo, load_handlers
from ..store import Database
from .config import ServerConfig
from .connection import ServerConnection

__all__ = ["Server"]

log = logging.getLogger("bucketly.server")


class Server:
    """A bucketlyd server. ``Server(config).run()`` blocks until it is told to stop."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.name = f"bucketlyd/{__version__}"
        self.log = log
        self.handlers: dict[str, HandlerInfo] = {}
        self.buckets: dict[str, Bucket] = {}
        #: Names of buckets whose creation is being written to the database.
        self.creating: set[str] = set()
        self.connections: set[ServerConnection] = set()
        self.connections_total = 0
        #: Bumped whenever any user's permissions change; connections drop cached decisions.
        self.grants_version = 0
        self.db = Database(config.database)
        self.auth_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bucketly-auth")
        self.job_executor = ThreadPoolExecutor(
            max_workers=config.job_threads, thread_name_prefix="bucketly-job"
        )
        self.started_at = time.time()
        self._events_of_deleted = 0
        self._listener: asyncio.Server | None = None
        self._stop: asyncio.Event | None = None
        #: Set once shutdown has begun: requests not yet read get ``shutting_down``.
        self.shutting_down = False
        #: (host, port) actually bound, once listening.
        self.address: tuple[str, int] | None = None

    def run(self) -> None:
        """Run until SIGTERM / SIGINT (or ``stop()``), then shut down in order."""
        asyncio.run(self.serve())

    def stop(self) -> None:
        """Ask a running server to shut down. Call it from the server's event loop."""
        if self._stop is not None:
            self._stop.set()

    async def serve(self) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # Before start(): a signal that arrives as soon as "ready" is logged must find them.
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: shutting down", sig.name)
        self.stop()

    async def start(self) -> None:
        config = self.config
        self.handlers = load_handlers(config.bucket_handlers)
        log.info(
            "loaded handlers module %s: %s",
            config.bucket_handlers,
            ", ".join(sorted(self.handlers)),
        )
        loop = asyncio.get_running_loop()
        # Bind first: a port in use fails the start before the database file is touched.
        self._listener = await loop.create_server(
            lambda: ServerConnection(self),
            config.hostname,
            config.port,
            reuse_address=True,
            start_serving=False,
        )
        await loop.run_in_executor(None, self.db.open)
        log.info("opened database file %s", config.database)
        for user in self.db.users.values():
            if user.default_password:
                log.warning(
                    "user %r still has its default password: change it (bucketly passwd), and "
                    "it is only accepted from loopback addresses until you do",
                    user.name,
                )
        for row in self.db.buckets.values():
            bucket = Bucket(row, self.handlers.get(row.handler))
            if bucket.broken:
                log.error("bucket %r is unavailable: %s", row.name, bucket.broken)
            self.add_bucket(bucket)
        if self.buckets:
            log.info("restored %d bucket definitions", len(self.buckets))
        self._tune_gc()
        await self._listener.start_serving()
        sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        # Tests and supervisors wait for this exact line (bucketly.testing does), so it is
        # logged even when --log-level hides ordinary information.
        level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING
        log.log(level, "bucketlyd ready on %s:%d", *self.address)

    def _tune_gc(self) -> None:
        if self.config.gc_threshold <= 0:
            return
        # Everything loaded so far lives as long as the process: take it out of collections.
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(self.config.gc_threshold, gen1, gen2)

    def add_bucket(self, bucket: Bucket) -> None:
        self.buckets[bucket.name] = bucket
        bucket.start_jobs(self.job_executor)

    async def remove_bucket(self, name: str) -> None:
        bucket = self.buckets.pop(name, None)
        if bucket is not None:
            self._events_of_deleted += bucket.events
            await bucket.stop_jobs(final_run=False)

    async def shutdown(self) -> None:
        timeout = self.config.shutdown_timeout
        if self._listener is not None:
            log.info("shutdown: no longer accepting connections")
            self._listener.close()
        busy = [conn.busy for conn in self.connections if conn.busy is not None]
        if busy:
            log.info("shutdown: finishing %d in-flight requests", len(busy))
            await asyncio.wait(busy, timeout=timeout)
        self.shutting_down = True
        if self.connections:
            log.info("shutdown: closing %d connections", len(self.connections))
            for conn in list(self.connections):
                conn.close()
        if any(bucket.jobs for bucket in self.buckets.values()):
            log.info("shutdown: stopping scheduled jobs and running each a final time")
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(b.stop_jobs(final_run=True) for b in self.buckets.values())),
                    timeout,
                )
            except TimeoutError:
                log.error("shutdown: scheduled jobs still running after %ss; giving up", timeout)
        self.job_executor.shutdown(wait=False, cancel_futures=True)
        self.auth_executor.shutdown(wait=False, cancel_futures=True)
        log.info("shutdown: closing the database file")
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)
        if self._listener is not None:
            await self._listener.wait_closed()
        log.info("stopped")

    def statistics(self) -> dict[str, Any]:
        buckets = {name: bucket.statistics() for name, bucket in sorted(self.buckets.items())}
        return {
            "server": self.name,
            "uptime": time.time() - self.started_at,
            "connections": len(self.connections),
            "connections_total": self.connections_total,
            "events": self._events_of_deleted + sum(b.events for b in self.buckets.values()),
            "buckets": buckets,
        }
