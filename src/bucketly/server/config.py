"""``ServerConfig``: every setting of bucketlyd, with its default and the reason for it.

The command line (bucketly.cli.daemon) is a thin layer that maps flags and environment variables
onto this object; the docs test checks that docs/configuration.md describes every field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..protocol.connection import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_PRE_AUTH_BYTES,
    DEFAULT_PRE_AUTH_FRAMES,
)
from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE
from ..protocol.limits import DEFAULT_MAX_FRAME_OBJECTS
from . import statsd_defaults as statsd_
from .admission import DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS, DEFAULT_RESERVED_CONNECTIONS
from .shards import DEFAULT_SHARDS, MAX_SHARDS
from .throttle import AUTH_FREE_FAILURES, AUTH_MAX_DELAY

__all__ = ["DEFAULT_DATABASE", "DEFAULT_PORT", "ENV_PREFIX", "ServerConfig", "options"]

#: The database file used when none is given: in the working directory.
DEFAULT_DATABASE = "bucketly_database.dat"
DEFAULT_PORT = 8484
#: Every option can also be set as ``BUCKETLYD_<OPTION>`` (upper case, ``-`` as ``_``).
ENV_PREFIX = "BUCKETLYD_"


def _option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ServerConfig:
    """Settings of one bucketlyd server. Build it, then ``Server(config).run()``."""

    database: str = _option(
        DEFAULT_DATABASE,
        "The SQLite database file holding bucket definitions, users, permissions and durable "
        "state. Created if missing.",
        positional=True,
    )
    bucket_handlers: str = _option(
        "bucketly.builtin_handlers",
        "The handlers module: a path to a .py file or an importable module name. Buckets can "
        "only use handler classes defined in it.",
    )
    hostname: str = _option(
        "127.0.0.1",
        "Address to listen on. The loopback default keeps the server private; use 0.0.0.0 to "
        "listen on every interface.",
    )
    port: int = _option(DEFAULT_PORT, "TCP port to listen on (0: any free port).")
    shards: int = _option(
        DEFAULT_SHARDS,
        f"Run this many independent servers (1 to {MAX_SHARDS}), one per core: shard i listens "
        "on --port + i with its own database file DATABASE-i (and metrics on the "
        "--metrics-address port + i); the server list is printed for clients "
        "(Client(servers=...), docs/scaling.md). SIGTERM stops them in order.",
    )
    tls_cert: str | None = _option(
        None,
        "PEM file with the server's TLS certificate (and chain). With --tls-key, clients must "
        "connect with TLS. Without TLS, passwords and tokens cross the network in clear.",
    )
    tls_key: str | None = _option(
        None,
        "PEM file with the private key of --tls-cert (if not in the same file).",
    )
    tls_client_ca: str | None = _option(
        None,
        "PEM file of the CA(s) that sign client certificates. Given, every client must present "
        "a certificate signed by one of them before it can say anything (needs --tls-cert).",
    )
    max_frame_size: int = _option(
        DEFAULT_MAX_FRAME_SIZE,
        "Largest frame a client may send, in bytes; checked from the length header before the "
        "body is read. A larger frame gets a frame_too_large error and the connection is closed.",
    )
    max_frame_objects: int = _option(
        DEFAULT_MAX_FRAME_OBJECTS,
        "Most MessagePack values (maps, arrays, strings, numbers: each counts one) in a frame, "
        "counted before it is decoded. Decoded, a value takes up to 96 bytes however small it "
        "is on the wire, so this bounds what one frame can take in memory (about 96 MiB by "
        "default, beyond its bytes). A frame of more gets a limit_exceeded error and the "
        "connection is closed.",
    )
    max_connection_queue: int = _option(
        64 * 1024 * 1024,
        "Bytes that the sends of one connection waiting for their durable commit may hold, "
        "decoded, at most (each counts its frame twice plus 96 bytes a value: what it can take "
        "at most). Past it the server stops reading from that connection until commits "
        "complete.",
    )
    max_bucket_queue: int = _option(
        256 * 1024 * 1024,
        "The same, for all the sends waiting for the commit of one durable bucket, from every "
        "connection. Past it, sends to that bucket wait (their connections stop reading) until "
        "commits complete.",
    )
    max_connections: int = _option(
        1024,
        "Most client connections at once. When all are taken, a new connection takes the slot "
        "of the oldest one that has not logged in (which gets limit_exceeded); when every one "
        "has logged in, the new one is sent too_many_connections and closed. Keep it below the "
        "process's open-file limit.",
    )
    reserved_connections: int = _option(
        DEFAULT_RESERVED_CONNECTIONS,
        "Slots of --max-connections that only connections that log in may have: connections "
        "that have not logged in take at most the others, and beyond that a new one takes the "
        "slot of the oldest of them.",
    )
    max_unauthenticated_per_address: int = _option(
        DEFAULT_MAX_UNAUTHENTICATED_PER_ADDRESS,
        "Connections one client address (IPv6: one /64) may have open before they log in. One "
        "more takes the slot of that address's oldest one that is not logging in, or is "
        "refused (too_many_connections) if all of them are.",
    )
    listen_backlog: int = _option(
        1024,
        "Connections the kernel queues for the server before it accepts them. Beyond it, new "
        "connections wait for a SYN retry (a second or more), so bursts of connects need it "
        "large: nginx and Redis use 511, uvicorn 2048. Linux caps it at net.core.somaxconn.",
    )
    auth_free_failures: int = _option(
        AUTH_FREE_FAILURES,
        "Failed password logins per user name, per client address and per (user, address) "
        "after which logins there are refused (too_many_attempts) without checking the "
        "password, for a window that starts at 1 second and doubles with each further failure. "
        "A user who logged in from an address lately counts only its own failures there.",
    )
    auth_max_delay: float = _option(
        AUTH_MAX_DELAY,
        "The longest such window, in seconds: the right password always works again after at "
        "most this long.",
    )
    auth_timeout: float = _option(
        DEFAULT_AUTH_TIMEOUT,
        "Seconds a connection may stay unauthenticated (from connecting, or from losing its "
        "login). Then it gets a limit_exceeded error and is closed. Also the TLS handshake "
        "timeout.",
    )
    frame_timeout: float = _option(
        60.0,
        "Seconds within which a frame, once its first byte has arrived, must be complete; "
        "slower (slowloris) clients get a limit_exceeded error and are closed. Allow for your "
        "largest frame over your slowest link.",
    )
    pre_auth_bytes: int = _option(
        DEFAULT_PRE_AUTH_BYTES,
        "Bytes of frames a client may send before it is authenticated, counted in whole frames "
        "(a longer frame header then gets frame_too_large). The frame that would go beyond it "
        "is not carried out: the connection gets a limit_exceeded error and is closed. While "
        "an auth is in progress, the server stops reading instead.",
    )
    pre_auth_frames: int = _option(
        DEFAULT_PRE_AUTH_FRAMES,
        "Frames a client may send before it is authenticated (hello, ping, failed auths, "
        "garbage). The next one gets a limit_exceeded error and the connection is closed.",
    )
    max_write_buffer: int = _option(
        64 * 1024 * 1024,
        "Bytes of replies the server holds for a client that does not read them. A reply is "
        "queued only while less than this is waiting (so one large dump always fits); past it, "
        "that client alone is disconnected, and its unsent replies dropped.",
    )
    metrics_address: str | None = _option(
        None,
        "HOST:PORT to serve Prometheus metrics (/metrics) and health checks (/healthz, "
        "/readyz) on, over plain HTTP; off unless given. Use a loopback address, or protect "
        "it (docs/security.md): it shows bucket and job names, and counts.",
    )
    statsd: str | None = _option(
        None,
        "HOST:PORT to take the statsd line protocol on, over UDP and TCP (the same port; 8125 "
        "is statsd's); off unless given. statsd has no authentication: keep it on loopback, "
        "or name the networks that may write in --statsd-allow (docs/statsd.md).",
    )
    statsd_allow: str = _option(
        statsd_.DEFAULT_ALLOW,
        "Comma-separated networks (CIDR) whose datagrams and connections the statsd listener "
        "takes; any other source is refused and counted (source_not_allowed). Loopback only "
        "unless told: 0.0.0.0/0,::/0 lets everyone who can reach the port write.",
    )
    statsd_bucket: str = _option(
        statsd_.DEFAULT_BUCKET,
        "The bucket statsd metrics go to when no --statsd-routes prefix matches their name; "
        "created at start-up with the StatsdMetrics handler if it does not exist.",
    )
    statsd_routes: str = _option(
        "",
        "Comma-separated PREFIX=BUCKET: a metric whose name starts with PREFIX goes to BUCKET "
        "(the longest prefix wins), e.g. checkout.=shop. The statsd listener writes only to "
        "these buckets and --statsd-bucket; missing ones are created with StatsdMetrics.",
    )
    statsd_flush_interval: float = _option(
        statsd_.DEFAULT_FLUSH_INTERVAL,
        "Seconds between two statsd flushes (statsd's flushInterval): each closes the interval "
        "of every statsd bucket (counters, timers and sets start again; gauges go on), and "
        "sends it to --statsd-graphite.",
    )
    statsd_percentiles: str = _option(
        statsd_.DEFAULT_PERCENTILES,
        "Comma-separated percentiles of statsd timers, histograms and distributions (statsd's "
        "percentThreshold), each reported as upper_<p> (99.9: upper_99_9); within 1% of the "
        "true value (DDSketch).",
    )
    statsd_receive_buffer: int = _option(
        statsd_.DEFAULT_RECEIVE_BUFFER,
        "Bytes of UDP receive buffer asked of the kernel for the statsd socket: what queues "
        "while the server is busy. Linux grants at most net.core.rmem_max (a warning says so); "
        "datagrams beyond it are dropped by the kernel, and counted (kernel_drops).",
    )
    statsd_graphite: str | None = _option(
        None,
        "HOST:PORT of a Graphite (carbon) plaintext receiver to send every statsd flush to, "
        "with statsd's names (stats.counters.X.rate ...; docs/statsd.md). Off unless given.",
    )
    shutdown_timeout: float = _option(
        30.0,
        "Seconds that shutdown (SIGTERM / SIGINT) waits for in-flight requests and for the "
        "final run of scheduled jobs before it gives up on them.",
    )
    job_threads: int = _option(
        4,
        "Worker threads for the slow part of scheduled jobs (e.g. writing to PostgreSQL). A "
        "job waiting on I/O holds one; ingestion never waits for them.",
    )
    snapshot_events: int = _option(
        1_000_000,
        "Events logged to a durable bucket after which its state is snapshotted and its log "
        "compacted. A restart replays at most this many events per bucket (about 1.5 s for a "
        "million small ones, see docs/durability.md); each snapshot encodes the whole state, "
        "pausing the server for as long as that takes.",
    )
    snapshot_seconds: float = _option(
        300.0,
        "Seconds after which a durable bucket that has logged any event since its last "
        "snapshot is snapshotted anyway, so that a slow bucket's log does not linger.",
    )
    snapshot_encoding: str = _option(
        "fork",
        "Where a snapshot-level bucket's periodic snapshot is encoded: fork, in a child process "
        "(copy-on-write, like Redis's BGSAVE), so the event loop pauses only for fork() while a "
        "large state is encoded; loop, on the event loop, which pauses ingestion for the whole "
        "snapshot() and encoding, but needs no memory for a child (see docs/durability.md).",
        choices=("fork", "loop"),
    )
    accept_data_loss: bool = _option(
        False,
        "Start even though the database file has lost data it had committed (its -wal file "
        "damaged or deleted, an older copy restored, durable log records missing): rebuild "
        "from what is whole, delete what follows the damage, and log and audit what was lost. "
        "Without it such a start is refused (exit status 7).",
    )
    quarantine_damaged: bool = _option(
        False,
        "Start even though a durable bucket's snapshot or log is damaged or incomplete: that "
        "bucket is unavailable (its data left untouched, for a backup or a later repair) and "
        "the others are served. Cannot be combined with --accept-data-loss.",
    )
    producer_retention: float = _option(
        3600.0,
        "Seconds a bucket remembers a client (producer) that has stopped sending, to recognise "
        "its resends after a reconnect (kept at least this long, at most twice). A client that "
        "resends later than this can have a batch counted twice.",
    )
    gc_threshold: int = _option(
        50_000,
        "Allocations between young-generation garbage collections (Python's default is 700). "
        "Buckets hold millions of long-lived objects; collecting less often and freezing the "
        "start-up heap keeps the collector from re-walking them. 0 keeps Python's default.",
    )
    log_level: str = _option(
        "info",
        "Logging level: debug, info, warning or error.",
        choices=("debug", "info", "warning", "error"),
    )

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)


def options() -> list[dataclasses.Field[Any]]:
    """The fields of ``ServerConfig``, in the order ``--help`` shows them."""
    return list(dataclasses.fields(ServerConfig))
