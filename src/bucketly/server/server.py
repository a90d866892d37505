"""``Server``: start-up, the listener, and an orderly shutdown.

Start-up: load the handlers module, open (or create) the database file, rebuild every bucket from
its definition, tune the garbage collector, listen (with TLS when configured; loudly warning when
a non-loopback address is served without it), start the sweep that enforces the connections'
timeouts, log ``ready``. Shutdown on SIGTERM / SIGINT,
each step logged: stop accepting, finish in-flight requests, close connections, stop scheduled
jobs and run each one a final time, close the database file, exit 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from .. import __version__
from ..buckets import Bucket, recovery
from ..buckets import reload as reloading
from ..buckets.journal import Journal
from ..buckets.snapshots import Snapshots
from ..buckets.workers import WorkerThreads
from ..errors import ConfigError, DataLossDetected, ReloadFailed, ShuttingDown, StorageError
from ..handlers import HandlerInfo, HandlersModule, load_module
from ..store import Database
from .admission import Admission
from .audit import AuditLog
from .config import ServerConfig
from .connection import CLOSE_GRACE, ServerConnection
from .metrics import MetricsServer
from .statsd import StatsdListener
from .throttle import AuthThrottle
from .tls import is_loopback, server_ssl_context

__all__ = ["Server"]

log = logging.getLogger("bucketly.server")

#: Longest pause between two sweeps for timed-out connections, in seconds (shorter when a
#: timeout is set lower): a timeout is enforced this late at most.
SWEEP_INTERVAL = 1.0


class Server:
    """A bucketlyd server. ``Server(config).run()`` blocks until it is told to stop."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.name = f"bucketlyd/{__version__}"
        self.log = log
        self.handlers: dict[str, HandlerInfo] = {}
        #: The load of the handlers module in use (its file's hash and time: ``handlers_module``).
        self.handlers_module: HandlersModule | None = None
        self.reloads = 0
        self.buckets: dict[str, Bucket] = {}
        #: Names of buckets whose creation is being written to the database.
        self.creating: set[str] = set()
        self.connections: set[ServerConnection] = set()
        self.connections_total = 0
        #: Bumped whenever any user's permissions change (``grants_changed``); connections
        #: then drop their cached decisions and re-check their login.
        self.grants_version = 0
        self.db = Database(config.database)
        #: The journal of durable buckets: group commit and snapshots (buckets/journal.py).
        self.durable = Journal(
            self.db,
            self.buckets,
            snapshot_events=config.snapshot_events,
            snapshot_seconds=config.snapshot_seconds,
            producer_retention=config.producer_retention,
            max_bucket_queue=config.max_bucket_queue,
        )
        #: Snapshot-level buckets: snapshots every few seconds and at shutdown (snapshots.py).
        self.snapshots = Snapshots(
            self.db, self.buckets, self.durable, faults=self.durable.fault,
            fork=config.snapshot_encoding == "fork",
        )
        self.audit = AuditLog(self.db)
        self.throttle = AuthThrottle(config.auth_free_failures, config.auth_max_delay)
        #: Who gets a connection slot (admission.py).
        self.admission: Admission[ServerConnection] = Admission(
            config.max_connections,
            config.reserved_connections,
            config.max_unauthenticated_per_address,
        )
        self.auth_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bucketly-auth")
        # Daemon threads (workers.py): a job stuck in its work cannot hold the process past
        # --shutdown-timeout.
        self.job_executor = WorkerThreads(config.job_threads, thread_name_prefix="bucketly-job")
        self.started_at = time.time()
        self._events_of_deleted = 0
        self._listener: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        #: Set at shutdown once every connection is gone.
        self._all_closed: asyncio.Event | None = None
        #: Set once shutdown has begun: requests not yet read get ``shutting_down``.
        self.shutting_down = False
        #: (host, port) actually bound, once listening.
        self.address: tuple[str, int] | None = None
        #: What was refused, counted for the metrics (metrics.py), each by a bounded reason:
        #: events of sends, by error code (the journal counts those refused after queueing);
        #: frames, by error code; connections closed or refused, by the limit; logins, by
        #: result.
        self.refused_events: collections.Counter[str] = collections.Counter()
        self.rejected_frames: collections.Counter[str] = collections.Counter()
        self.closed_by_limit: collections.Counter[str] = collections.Counter()
        self.authentications: collections.Counter[str] = collections.Counter()
        #: Bytes read from and written to client connections (the protocol's bytes: under TLS,
        #: before encryption).
        self.bytes_received = 0
        self.bytes_sent = 0
        #: Set once the listener accepts connections (``readiness``).
        self._ready = False
        #: The HTTP endpoint of metrics and health checks (metrics.py), if asked for.
        self.metrics: MetricsServer | None = None
        if config.metrics_address is not None:
            try:
                self.metrics = MetricsServer(self, config.metrics_address)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        #: The statsd listener (statsd.py), if asked for.
        self.statsd: StatsdListener | None = (
            StatsdListener(self) if config.statsd is not None else None
        )

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
        if hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        if hasattr(signal, "SIGXFSZ"):
            # Over a file-size limit (RLIMIT_FSIZE), a write must fail with EFBIG, which a
            # durable send reports as storage_error, instead of the signal killing the server.
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: shutting down", sig.name)
        self.stop()

    def _on_reload_signal(self) -> None:
        if not self._ready or self.shutting_down:
            log.warning("received SIGHUP before the server was ready, or while it stops: "
                        "not reloading the handlers module")
            return
        log.info("received SIGHUP: reloading the handlers module")
        try:
            self.reload()
        except ReloadFailed:
            pass  # reload() logged it
        except Exception:
            log.exception("internal error reloading the handlers module")

    def reload(self, *, force: bool = False, by: str | None = None,
               peer: str | None = None) -> dict[str, Any]:
        """Reload the handlers module, every bucket's state carried into its new class
        (buckets/reload.py). All or nothing: raises ``ReloadFailed``, changing nothing."""
        if self.shutting_down:
            raise ShuttingDown("the server is shutting down; reconnect to another or later")
        try:
            plan = reloading.prepare(
                self.config.bucket_handlers, list(self.buckets.values()), force=force
            )
        except ReloadFailed as exc:
            log.error("%s", exc.message)
            self.audit.record("handlers_reload_failed", by, peer, exc.message)
            raise
        for carried in plan.carried:
            if carried.status in ("reloaded", "started", "dropped"):
                carried.bucket.replace_handler(carried.info, carried.handler, self.job_executor)
        self.handlers_module = plan.module
        self.handlers = plan.module.handlers
        self.reloads += 1
        result = plan.describe()
        for carried in plan.carried:
            if carried.status == "dropped":
                log.warning("reload (force): bucket %r lost its state: its handler %r is gone",
                            carried.bucket.name, carried.bucket.row.handler)
        log.info(
            "reloaded handlers module %s (sha256 %s): %d buckets carried over in %.1f ms",
            plan.module.spec, (plan.module.sha256 or "?")[:12],
            sum(c.status == "reloaded" for c in plan.carried),
            result["paused_seconds"] * 1000,
        )
        self.audit.record(
            "handlers_reloaded", by, peer,
            f"{plan.module.spec} sha256 {plan.module.sha256}"
            + (" (force)" if force else ""),
        )
        return result

    async def start(self) -> None:
        config = self.config
        self.handlers_module = load_module(config.bucket_handlers)
        self.handlers = self.handlers_module.handlers
        log.info(
            "loaded handlers module %s: %s",
            config.bucket_handlers,
            ", ".join(sorted(self.handlers)),
        )
        loop = asyncio.get_running_loop()
        if self.metrics is not None:
            # First: /readyz answers 503 while the database opens and durable buckets recover.
            await self.metrics.start()
        ssl_context = server_ssl_context(config)
        # Bind first: a port in use fails the start before the database file is touched.
        self._listener = await loop.create_server(
            lambda: ServerConnection(self),
            config.hostname,
            config.port,
            reuse_address=True,
            backlog=config.listen_backlog,
            start_serving=False,
            ssl=ssl_context,
            ssl_handshake_timeout=config.auth_timeout if ssl_context is not None else None,
        )
        if self.statsd is not None:
            await self.statsd.bind()
        bound = [sock.getsockname()[0] for sock in self._listener.sockets]
        if ssl_context is not None:
            log.info(
                "TLS on%s", " (client certificates required)" if config.tls_client_ca else ""
            )
        elif not all(is_loopback(host) for host in bound):
            log.warning(
                "NOT ENCRYPTED: listening on %s without TLS. Passwords, tokens and events cross "
                "the network in clear text, readable and changeable by anyone on the path. Use "
                "--tls-cert and --tls-key, or listen on 127.0.0.1 only.",
                ", ".join(bound),
            )
        if config.accept_data_loss and config.quarantine_damaged:
            raise ConfigError(
                "--accept-data-loss and --quarantine-damaged exclude each other: give one"
            )
        await loop.run_in_executor(
            None, partial(self.db.open, accept_loss=config.accept_data_loss)
        )
        log.info("opened database file %s", config.database)
        if self.db.lost_commits:
            self._report_loss(
                None,
                f"the database file had lost its last {self.db.lost_commits} committed write "
                "transactions (its mark file was ahead of it); started without them",
            )
        for user in self.db.users.values():
            if user.default_password:
                log.warning(
                    "user %r still has its default password: change it (bucketly passwd), and "
                    "it is only accepted from loopback addresses until you do",
                    user.name,
                )
        await recovery.forget_deleted(self.db)
        for row in list(self.db.buckets.values()):
            bucket = Bucket(row, self.handlers.get(row.handler))
            if row.persistence != "memory" and not bucket.broken:
                # Before its jobs start: they must see the recovered state.
                await self._recover(bucket)
            if bucket.broken:
                log.error("bucket %r is unavailable: %s", row.name, bucket.broken)
            self.add_bucket(bucket)
        if self.buckets:
            log.info("restored %d bucket definitions", len(self.buckets))
        self.durable.start()
        self.snapshots.start()
        if self.statsd is not None:
            await self.statsd.start()
        self._tune_gc()
        self._sweeper = loop.create_task(self._sweep())
        await self._listener.start_serving()
        self._ready = True
        sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        # Tests and supervisors wait for this exact line (bucketly.testing does), so it is
        # logged even when --log-level hides ordinary information.
        level = logging.INFO if log.isEnabledFor(logging.INFO) else logging.WARNING
        log.log(level, "bucketlyd ready on %s:%d", *self.address)

    async def _recover(self, bucket: Bucket) -> None:
        """Recover a durable or snapshot-level bucket; on damage, stop the start, unless told
        otherwise."""
        config = self.config
        try:
            if bucket.row.persistence == "snapshot":
                loss, taken_at, size = await recovery.recover_snapshot_level(
                    self.db, bucket, accept_loss=config.accept_data_loss
                )
                self.snapshots.track(bucket, taken_at=taken_at, size=size)
            else:
                loss = await recovery.recover(
                    self.db, bucket, accept_loss=config.accept_data_loss
                )
        except DataLossDetected as exc:
            if not config.quarantine_damaged:
                raise  # the message says what is damaged, and the ways out
            bucket.broken = (
                f"quarantined at start-up (--quarantine-damaged), its data left untouched: "
                f"{exc.message}"
            )
            self.audit.record("bucket_quarantined", None, None, f"{bucket.name}: {exc.message}")
            return
        if loss is not None:
            self._report_loss(bucket.name, loss)

    def _report_loss(self, bucket: str | None, what: str) -> None:
        log.error("DATA LOSS ACCEPTED (--accept-data-loss): %s", what)
        self.audit.record("data_loss_accepted", None, None,
                          f"{bucket}: {what}" if bucket is not None else what)

    def _busy(self) -> list[asyncio.Task[None]]:
        return [conn.busy for conn in self.connections if conn.busy is not None]

    async def _sweep(self) -> None:
        """Close connections that broke a timeout (auth, unfinished frame); see connection.py.
        Delete expired tokens: the connections they logged in lose that login."""
        config = self.config
        interval = min(SWEEP_INTERVAL, config.auth_timeout / 4, config.frame_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)
            await self._expire_tokens()

    async def _expire_tokens(self) -> None:
        now = time.time()
        expired = [token for token in self.db.tokens.values() if token.expired(now)]
        if not expired:
            return
        try:
            await self.db.delete_tokens([token.id for token in expired])
        except StorageError:
            return  # logged by the database; expired tokens log no one in meanwhile
        self.grants_changed()
        for token in expired:
            self.audit.record("token_expired", token.user, None, f"token {token.id}")

    def _tune_gc(self) -> None:
        if self.config.gc_threshold <= 0:
            return
        # Everything loaded so far lives as long as the process: take it out of collections.
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(self.config.gc_threshold, gen1, gen2)

    def readiness(self) -> tuple[bool, str]:
        """Whether the server takes connections now, and why not (for ``/readyz``)."""
        if self.shutting_down:
            return False, "shutting down"
        if not self._ready:
            return False, "starting: loading the database file and recovering durable buckets"
        return True, "accepting connections"

    def events_applied(self) -> int:
        """Events applied since the server started, to every bucket (deleted ones too)."""
        return self._events_of_deleted + sum(b.events for b in self.buckets.values())

    def grants_changed(self) -> None:
        """Users, grants or tokens changed: every connection re-checks its login and grants
        before its next request."""
        self.grants_version += 1

    def add_bucket(self, bucket: Bucket) -> None:
        self.buckets[bucket.name] = bucket
        bucket.start_jobs(self.job_executor)

    async def remove_bucket(self, name: str) -> None:
        bucket = self.buckets.pop(name, None)
        if bucket is not None:
            self._events_of_deleted += bucket.events
            await bucket.stop_jobs(final_run=False)

    def connection_gone(self) -> None:
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def shutdown(self) -> None:
        """Stop in order, each step logged; every request read is answered.

        A request carried out gets its reply (a durable send: once it is on disk), any other
        one read from now on gets ``shutting_down``, and then each connection is closed after
        its replies. So a client knows that a request without a reply was not carried out.
        """
        loop = asyncio.get_running_loop()
        timeout = self.config.shutdown_timeout
        deadline = loop.time() + timeout
        if self._listener is not None:
            log.info("shutdown: no longer accepting connections")
            self._listener.close()
        if self.statsd is not None:
            log.info("shutdown: the statsd listener no longer reads")
            self.statsd.close()
        self.shutting_down = True
        busy = self._busy()
        if busy:
            log.info("shutdown: finishing %d in-flight requests", len(busy))
        # A busy connection may queue more (a durable send joins the pipeline, with its
        # shutting_down reply in order): wait until none is busy, or the time is up.
        while busy and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(busy, timeout=remaining)
            busy = self._busy()
        if busy:
            log.error(
                "shutdown: %d requests still in progress after %gs (--shutdown-timeout); their "
                "connections are closed without their replies",
                len(busy),
                timeout,
            )
        await self.durable.drain()
        if self.statsd is not None:
            log.info("shutdown: a last statsd flush")
            await self.statsd.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.connections:
            log.info("shutdown: closing %d connections", len(self.connections))
            self._all_closed = asyncio.Event()
            for conn in list(self.connections):
                conn.finish()
            # Their last replies must leave before the process does.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), CLOSE_GRACE)
        # No time-based snapshot from here on: one taken while a job's final run has its data
        # out of the state would lose that data if the run never finishes.
        self.durable.stop_maintenance()
        await self.snapshots.stop_maintenance()
        unfinished: set[Bucket] = set()
        if any(bucket.jobs for bucket in self.buckets.values()):
            log.info("shutdown: stopping scheduled jobs and running each a final time")
            stopping = [
                asyncio.ensure_future(b.stop_jobs(final_run=True)) for b in self.buckets.values()
            ]
            _, pending = await asyncio.wait(stopping, timeout=timeout)
            if pending:
                unfinished = self._give_up_on_jobs(timeout)
        self.job_executor.shutdown(wait=False, cancel_futures=True)
        self.auth_executor.shutdown(wait=False, cancel_futures=True)
        # After the jobs' final runs, so that what they changed is in the snapshots.
        await self.durable.stop(skip=unfinished)
        await self.snapshots.stop(skip=unfinished)
        await self.audit.flush()
        log.info("shutdown: closing the database file")
        await asyncio.get_running_loop().run_in_executor(None, self.db.close)
        if self._listener is not None:
            await self._listener.wait_closed()
        if self.metrics is not None:
            await self.metrics.stop()
        log.info("stopped")

    def _give_up_on_jobs(self, timeout: float) -> set[Bucket]:
        """Log the jobs still running after ``timeout``; return the durable buckets they hold.

        Their work is left to the worker threads, which end with the process. What such a job
        had taken from a durable bucket is kept by not snapshotting that bucket: the next start
        rebuilds it from its last snapshot and log, the job's data included.
        """
        running = [
            (bucket, name)
            for bucket in self.buckets.values()
            for name, runner in bucket.jobs.items()
            if runner.running
        ]
        log.error(
            "shutdown: giving up after %gs (--shutdown-timeout) on scheduled jobs still "
            "running: %s; their work is abandoned",
            timeout,
            ", ".join(f"{bucket.name}.{name}" for bucket, name in running) or "none",
        )
        kept = {
            bucket for bucket, _ in running
            if bucket.journal is not None or bucket.snapshots is not None
        }
        for bucket in kept:
            log.warning(
                "shutdown: %s bucket %r is not snapshotted, so that the next start "
                "rebuilds the data its unfinished job had taken (from its last snapshot%s)",
                bucket.row.persistence, bucket.name,
                " and log" if bucket.journal is not None else "",
            )
        return kept

    def statistics(self) -> dict[str, Any]:
        buckets = {name: bucket.statistics() for name, bucket in sorted(self.buckets.items())}
        return {
            "server": self.name,
            "uptime": time.time() - self.started_at,
            "connections": len(self.connections),
            "connections_total": self.connections_total,
            "events": self.events_applied(),
            "buckets": buckets,
            "durable_log": self.durable.statistics(),
            "snapshots": self.snapshots.statistics(),
            **({"statsd": self.statsd.statistics()} if self.statsd is not None else {}),
        }
