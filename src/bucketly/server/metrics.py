"""Prometheus metrics and health checks over HTTP: ``bucketlyd --metrics-address HOST:PORT``.

Theory of operation. Nothing here runs on the ingest path: the server keeps its counters as plain
integers (``Bucket.events``, ``JobRunner.runs``, ``Journal.commits``...), and ``Collector`` turns
them into metric families when Prometheus scrapes, on the event loop, so that every scrape sees
one consistent moment. The HTTP side is a few lines of asyncio: one request per connection, GET
only, a bounded request head read within a timeout, and three paths:

- ``/metrics``: the Prometheus text format (``prometheus_client``), with its process collector
  (CPU, resident memory, open file descriptors, start time);
- ``/healthz``: 200 while the event loop answers (it is the event loop that answers);
- ``/readyz``: 200 once the server is accepting connections (handlers loaded, recovery done,
  listener open), 503 before and during shutdown; both with a short JSON body saying why.

Labels are bounded: a bucket's name and a job's name, never anything a request carries. A job's
name is ``job_name``, because Prometheus gives every target it scrapes a ``job`` label and would
rename ours ``exported_job``. The reasons, frame errors and login results known in advance are
exported at 0 before they happen (``MetricSpec.known``), so ``rate()`` sees the first ones. The
endpoint shows no event data, user name or secret; docs/security.md says how to protect it.
``METRICS`` lists every metric, and docs/operations.md is generated from it.

Histograms (a view's latency, a durable commit's time and size, the event loop's lag) are
``bucketly.histogram.Histogram`` counts kept where they are measured, turned into Prometheus
histograms here. The event loop's lag is measured while the endpoint is on (``LoopLagProbe``): a
timer every ``LOOP_LAG_INTERVAL`` notes how late it fires, which is how long whatever ran on the
loop then (a handler, a large batch, a job's serialized part) made every other request wait.
A handler that reports the size of its state (``Handler.state_bytes``) is asked at scrape time.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _CollectorBase

from ..errors import WIRE_CODES, BadFrame, BadRequest, FrameTooLarge
from ..histogram import LOOP_LAG_BOUNDS, Histogram
from ..protocol.statsd import REJECT_REASONS as STATSD_REJECT_REASONS
from .statsd_defaults import LISTENER_REASONS as STATSD_LISTENER_REASONS

if TYPE_CHECKING:
    from .server import Server

__all__ = ["METRICS", "Collector", "MetricsServer", "parse_address"]

log = logging.getLogger("bucketly.server")

#: Bytes of request head (request line and headers) read at most; a longer one gets 431.
MAX_REQUEST_HEAD = 8 * 1024
#: Seconds a client has to send its request head.
REQUEST_TIMEOUT = 5.0
#: Seconds between two measurements of the event loop's lag: ten a second cost nothing next to
#: ingest (a timer each), and a stall of the loop longer than this is always measured whole.
LOOP_LAG_INTERVAL = 0.1

#: The limits a connection can be closed or refused for (``ServerConnection.limit_exceeded``,
#: admission.py, protocol/connection.py): each the option that sets it.
CLOSING_LIMITS = ("auth_timeout", "frame_timeout", "max_connections", "max_frame_objects",
                  "max_unauthenticated_per_address", "max_write_buffer", "pre_auth_bytes",
                  "pre_auth_frames", "reserved_connections")
#: What a request read and not yet carried out can wait for (``ServerConnection.waits``).
WAITS = ("bucket_queue", "commit", "pipeline", "turn")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    help: str
    #: Label values exported at 0 before they happen. Prometheus's ``rate()`` and
    #: ``increase()`` see no increase in a series whose first sample is already 3: without a 0
    #: first, the first refusals of a reason would raise no alert.
    known: tuple[str, ...] = ()


#: Every metric bucketlyd exports (a counter's samples get ``_total`` appended by the format).
METRICS = [
    MetricSpec("bucketly_connections", "gauge", (), "Client connections open now."),
    MetricSpec("bucketly_connections_accepted", "counter", (),
               "Client connections accepted since the server started."),
    MetricSpec("bucketly_events_applied", "counter", (),
               "Events applied to all buckets since the server started (deleted buckets too)."),
    MetricSpec("bucketly_buckets", "gauge", (), "Buckets defined."),
    MetricSpec("bucketly_events_refused", "counter", ("reason",),
               "Events of sends that were refused, by the error code their sender got "
               "(permission_denied, unknown_bucket, handler_error, storage_error, "
               "shutting_down...): nothing is refused without being counted here.",
               tuple(sorted(WIRE_CODES))),
    MetricSpec("bucketly_frames_rejected", "counter", ("reason",),
               "Frames answered with a protocol error (bad_frame, bad_request, "
               "frame_too_large).",
               tuple(sorted((BadFrame.code, BadRequest.code, FrameTooLarge.code)))),
    MetricSpec("bucketly_connections_closed_by_limit", "counter", ("limit",),
               "Connections closed, or refused, for a limit, by the option that sets it "
               "(max_connections, pre_auth_frames, auth_timeout, max_write_buffer...).",
               CLOSING_LIMITS),
    MetricSpec("bucketly_authentications", "counter", ("result",),
               "Logins, by result: password_ok, password_failed, token_ok, token_failed, "
               "throttled.",
               ("password_ok", "password_failed", "token_ok", "token_failed", "throttled")),
    MetricSpec("bucketly_received_bytes", "counter", (),
               "Bytes read from client connections (under TLS, once decrypted)."),
    MetricSpec("bucketly_sent_bytes", "counter", (),
               "Bytes written to client connections: greetings, replies, errors (under TLS, "
               "before encryption)."),
    MetricSpec("bucketly_requests_waiting", "gauge", ("wait",),
               "Requests read and not yet carried out, by what they wait for: commit (a "
               "durable send, its commit), bucket_queue (a send, room in its durable bucket's "
               "full queue), pipeline (a request, the durable sends before it on its "
               "connection), turn (connections that yielded their turn to the others, with "
               "requests unread).",
               WAITS),
    MetricSpec("bucketly_event_loop_lag_seconds", "histogram", (),
               f"How late a timer of the event loop fired, measured every "
               f"{LOOP_LAG_INTERVAL:g} s: how long what ran on the loop then made every "
               f"other request wait."),
    MetricSpec("bucketly_bucket_events_applied", "counter", ("bucket",),
               "Events applied to the bucket since the server started."),
    MetricSpec("bucketly_bucket_handler_errors", "counter", ("bucket",),
               "Calls into the bucket's handler (events, views, jobs) that raised."),
    MetricSpec("bucketly_bucket_unavailable", "gauge", ("bucket",),
               "1 if the bucket cannot take requests (its handler is gone or failed, or it "
               "was quarantined at start-up)."),
    MetricSpec("bucketly_bucket_view_duration_seconds", "histogram", ("bucket",),
               "How long each view call took in the bucket's handler (failed calls too)."),
    MetricSpec("bucketly_bucket_state_bytes", "gauge", ("bucket",),
               "The size of the bucket's state as its handler reports it (Handler.state_bytes; "
               "no sample for a handler that reports none)."),
    MetricSpec("bucketly_job_runs", "counter", ("bucket", "job_name"),
               "Runs of the scheduled job since the server started."),
    MetricSpec("bucketly_job_failures", "counter", ("bucket", "job_name"),
               "Runs of the scheduled job that failed."),
    MetricSpec("bucketly_job_consecutive_failures", "gauge", ("bucket", "job_name"),
               "Runs of the scheduled job that failed since its last success."),
    MetricSpec("bucketly_job_running", "gauge", ("bucket", "job_name"),
               "1 while a run of the scheduled job is in progress."),
    MetricSpec("bucketly_job_last_duration_seconds", "gauge", ("bucket", "job_name"),
               "How long the scheduled job's last run took."),
    MetricSpec("bucketly_job_seconds_since_success", "gauge", ("bucket", "job_name"),
               "Seconds since the scheduled job last succeeded (since the server started, if "
               "it has not yet): what to alert on when a flush to a database is stuck."),
    MetricSpec("bucketly_journal_commits", "counter", (),
               "Durable commits (each one fsync, shared by every send in it)."),
    MetricSpec("bucketly_journal_records", "counter", (), "Durable sends committed."),
    MetricSpec("bucketly_journal_events", "counter", (), "Events of durable sends committed."),
    MetricSpec("bucketly_journal_failed_commits", "counter", (),
               "Durable commits that failed (their sends got storage_error, nothing applied)."),
    MetricSpec("bucketly_journal_commit_seconds", "counter", (),
               "Seconds spent in durable commits."),
    MetricSpec("bucketly_journal_queued", "gauge", (),
               "Records and actions waiting for the durable journal."),
    MetricSpec("bucketly_journal_written_bytes", "counter", (),
               "Bytes of durable sends committed to the journal (their payloads)."),
    MetricSpec("bucketly_journal_commit_duration_seconds", "histogram", (),
               "How long each durable commit took: its transaction, whose fsync is most of it "
               "(synchronous=FULL); every durable send waits for one."),
    MetricSpec("bucketly_journal_commit_sends", "histogram", (),
               "Durable sends in each commit (group commit: they share its fsync)."),
    MetricSpec("bucketly_bucket_journal_queued_bytes", "gauge", ("bucket",),
               "What the durable bucket's sends waiting for their commit take in memory, at most "
               "(back-pressure at --max-bucket-queue)."),
    MetricSpec("bucketly_bucket_journal_records_since_snapshot", "gauge", ("bucket",),
               "Journal records of the durable bucket after its snapshot: what a restart "
               "replays."),
    MetricSpec("bucketly_bucket_journal_log_bytes", "gauge", ("bucket",),
               "Bytes of the durable bucket's journal records after its snapshot (their "
               "payloads): what its log takes in the database file, near enough, until the next "
               "snapshot compacts it."),
    MetricSpec("bucketly_bucket_seconds_since_snapshot", "gauge", ("bucket",),
               "Seconds since the durable or snapshot-level bucket's last snapshot (or since the "
               "server started): for a snapshot-level bucket, what a kill -9 would lose."),
    MetricSpec("bucketly_statsd_metrics", "counter", (),
               "statsd metrics (one per value of a line) the statsd listener handed to its "
               "buckets (with --statsd)."),
    MetricSpec("bucketly_statsd_rejected", "counter", ("reason",),
               "statsd lines not taken, by reason (bad_value, no_value, not_utf8...; "
               "source_not_allowed counts datagrams and connections; docs/statsd.md).",
               tuple(sorted((*STATSD_REJECT_REASONS, *STATSD_LISTENER_REASONS)))),
    MetricSpec("bucketly_statsd_kernel_drops", "counter", (),
               "UDP datagrams the kernel dropped before the statsd listener could read them "
               "(its receive buffer was full: --statsd-receive-buffer)."),
    MetricSpec("bucketly_statsd_graphite_failures", "counter", (),
               "statsd flushes that could not be sent to --statsd-graphite (not retried)."),
]
_SPECS = {spec.name: spec for spec in METRICS}
_FAMILIES = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
             "histogram": HistogramMetricFamily}


class Collector(_CollectorBase):
    """Reads the server's counters at scrape time (see the module docstring)."""

    def __init__(self, server: Server, loop_lag: Histogram | None = None) -> None:
        self.server = server
        self.loop_lag = loop_lag

    def _family(self, name: str) -> CounterMetricFamily | GaugeMetricFamily | (
        HistogramMetricFamily
    ):
        spec = _SPECS[name]
        cls = _FAMILIES[spec.kind]
        return cls(name, spec.help, labels=list(spec.labels))

    def collect(self) -> Iterator[Metric]:
        server = self.server
        now, monotonic = time.time(), time.monotonic()
        families = {spec.name: self._family(spec.name) for spec in METRICS}

        def add(name: str, value: float, *labels: str) -> None:
            family = families[name]
            assert not isinstance(family, HistogramMetricFamily)
            family.add_metric(list(labels), value)

        def add_histogram(name: str, histogram: Histogram, *labels: str) -> None:
            family = families[name]
            assert isinstance(family, HistogramMetricFamily)
            family.add_metric(list(labels), histogram.cumulative(), histogram.sum)

        stats = server.durable.statistics()
        add("bucketly_connections", len(server.connections))
        add("bucketly_connections_accepted", server.connections_total)
        add("bucketly_buckets", len(server.buckets))
        add("bucketly_events_applied", server.events_applied())
        for key in ("commits", "records", "events", "failed_commits", "commit_seconds"):
            add(f"bucketly_journal_{key}", stats[key])
        add("bucketly_journal_queued", stats["queued"])
        add("bucketly_journal_written_bytes", server.durable.written_bytes)
        add_histogram("bucketly_journal_commit_duration_seconds", server.durable.commit_latency)
        add_histogram("bucketly_journal_commit_sends", server.durable.commit_sizes)
        add("bucketly_received_bytes", server.bytes_received)
        add("bucketly_sent_bytes", server.bytes_sent)
        if self.loop_lag is not None:
            add_histogram("bucketly_event_loop_lag_seconds", self.loop_lag)
        waits = collections.Counter(wait for conn in server.connections for wait in conn.waits())
        refused = server.refused_events + server.durable.refused_events
        for counts, name in (
            (refused, "bucketly_events_refused"),
            (server.rejected_frames, "bucketly_frames_rejected"),
            (server.closed_by_limit, "bucketly_connections_closed_by_limit"),
            (server.authentications, "bucketly_authentications"),
            (waits, "bucketly_requests_waiting"),
        ):
            for reason in _SPECS[name].known:
                if reason not in counts:
                    add(name, 0, reason)
            for reason, count in sorted(counts.items()):
                add(name, count, reason)
        for name, bucket in sorted(server.buckets.items()):
            add("bucketly_bucket_events_applied", bucket.events, name)
            add("bucketly_bucket_handler_errors", bucket.errors, name)
            add("bucketly_bucket_unavailable", 1 if bucket.broken else 0, name)
            add_histogram("bucketly_bucket_view_duration_seconds", bucket.view_latency, name)
            size = bucket.state_bytes()
            if size is not None:
                add("bucketly_bucket_state_bytes", size, name)
            journal = bucket.journal
            if journal is not None:
                add("bucketly_bucket_journal_queued_bytes", journal.queued, name)
                add("bucketly_bucket_journal_records_since_snapshot",
                    journal.records_since_snapshot, name)
                add("bucketly_bucket_journal_log_bytes", journal.log_bytes, name)
                add("bucketly_bucket_seconds_since_snapshot", monotonic - journal.snapshot_at,
                    name)
            snapshots = bucket.snapshots
            if snapshots is not None:
                taken = snapshots.taken_at if snapshots.taken_at is not None else (
                    server.started_at
                )
                add("bucketly_bucket_seconds_since_snapshot", max(0.0, now - taken), name)
            for job_name, job in sorted(bucket.jobs.items()):
                add("bucketly_job_runs", job.runs, name, job_name)
                add("bucketly_job_failures", job.failures, name, job_name)
                add("bucketly_job_consecutive_failures", job.consecutive_failures, name,
                    job_name)
                add("bucketly_job_running", 1 if job.running else 0, name, job_name)
                if job.last_duration is not None:
                    add("bucketly_job_last_duration_seconds", job.last_duration, name, job_name)
                since = job.last_success_at if job.last_success_at is not None else (
                    server.started_at
                )
                add("bucketly_job_seconds_since_success", now - since, name, job_name)
        listener = server.statsd
        if listener is not None:
            add("bucketly_statsd_metrics", listener.metrics)
            add("bucketly_statsd_kernel_drops", listener.kernel_drops())
            add("bucketly_statsd_graphite_failures", listener.graphite_failures)
            for reason in _SPECS["bucketly_statsd_rejected"].known:
                add("bucketly_statsd_rejected", listener.rejected.get(reason, 0), reason)
        yield from families.values()


def parse_address(address: str, option: str = "--metrics-address") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9484`` for IPv6) as (host, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{option} must be HOST:PORT, not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class MetricsServer:
    """The HTTP listener of ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(self, server: Server, address: str) -> None:
        self.server = server
        self.host, self.port = parse_address(address)
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.loop_lag = Histogram(LOOP_LAG_BOUNDS)
        self.registry.register(Collector(server, self.loop_lag))
        self._listener: asyncio.Server | None = None
        self._probe: asyncio.Task[None] | None = None
        #: (host, port) actually bound, once listening.
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        self._listener = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True, limit=MAX_REQUEST_HEAD
        )
        sockname = self._listener.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._probe = asyncio.get_running_loop().create_task(
            self._measure_loop_lag(), name="event loop lag"
        )
        log.info("metrics on http://%s:%d/metrics", *self.address)

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        lag = self.loop_lag
        while True:
            due = loop.time() + LOOP_LAG_INTERVAL
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            # The loop may wake a timer up to its clock resolution early: that is no lag.
            lag.observe(max(0.0, loop.time() - due))

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
            self._listener = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(
                    reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT
                )
            except asyncio.LimitOverrunError:
                await self._respond(writer, 431, b"request head too large\n")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3:
                await self._respond(writer, 400, b"bad request\n")
                return
            method, target, _ = parts
            path = target.split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                await self._respond(writer, 405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
                return
            status, body, kind = self._route(path)
            await self._respond(writer, status, body if method == b"GET" else b"", kind,
                                length=len(body))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _route(self, path: bytes) -> tuple[int, bytes, bytes]:
        if path == b"/metrics":
            return 200, generate_latest(self.registry), b"text/plain; version=0.0.4; charset=utf-8"
        if path == b"/healthz":
            return 200, _json({"status": "ok"}), b"application/json"
        if path == b"/readyz":
            ready, why = self.server.readiness()
            return (200 if ready else 503), _json({"ready": ready, "reason": why}), (
                b"application/json"
            )
        return 404, b"not found: try /metrics, /healthz or /readyz\n", b"text/plain"

    async def _respond(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                       kind: bytes = b"text/plain", *, extra: bytes = b"",
                       length: int | None = None) -> None:
        reason = _REASONS.get(status, b"")
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n%s\r\n"
            % (status, reason, kind, len(body) if length is None else length, extra)
            + body
        )
        await writer.drain()


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def _json(value: Any) -> bytes:
    return json.dumps(value).encode() + b"\n"
