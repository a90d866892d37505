"""The statsd listener: ``bucketlyd --statsd HOST:PORT`` (UDP and TCP), routing, flushes.

Theory of operation. One UDP socket and one TCP listener share the port. The UDP socket is read
by a reader callback on the event loop, not a ``DatagramProtocol``: each time it is readable,
up to ``MAX_DATAGRAMS_PER_READ`` datagrams are taken with ``recvmsg`` in a non-blocking loop,
parsed (protocol/statsd.py), and handed to their buckets in one ``Bucket.apply`` per bucket: a
batch, not a call per datagram. ``recvmsg`` also brings the kernel's count of datagrams it
dropped because the receive buffer was full (``SO_RXQ_OVFL``); ``statistics()`` reads the same
count from ``/proc/net/udp`` too, so a drop after the last datagram read is reported as well.
TCP connections are newline-delimited streams (``LineBuffer``), their last line taken even
without a newline.

A datagram or connection from an address outside ``--statsd-allow`` is not read further; it
and every line that cannot be parsed or delivered is counted by reason (``rejected``).

Every ``--statsd-flush-interval`` seconds, each statsd bucket whose handler has
``statsd_flush`` (``bucketly.statsd.StatsdMetrics``) closes its interval, on the event loop (a
swap of dictionaries); the closed intervals are turned into Graphite lines and sent in a worker
thread, so a slow or absent Graphite never holds up ingestion. A failed send is counted and
logged, and not retried (statsd does not retry either): the next interval goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, HandlerError
from ..lograte import LogLimiter
from ..protocol.statsd import REJECT_REASONS, LineBuffer, Metric, StatsdParser
from ..statsd import StatsdMetrics, graphite_lines
from ..store import BucketRow
from .metrics import parse_address
from .statsd_defaults import (
    DEFAULT_ALLOW,
    DEFAULT_BUCKET,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_RECEIVE_BUFFER,
    LISTENER_REASONS,
)

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_BUCKET",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_RECEIVE_BUFFER",
    "LISTENER_REASONS",
    "StatsdListener",
]

log = logging.getLogger("bucketly.statsd")

#: Datagrams read in one go before the event loop serves anything else (fairness).
MAX_DATAGRAMS_PER_READ = 512
#: Largest UDP datagram (IPv4 payload limit).
MAX_DATAGRAM = 65535
#: Seconds a Graphite connection and send may take before the flush is given up.
GRAPHITE_TIMEOUT = 5.0
#: Addresses whose allow-list decision is remembered (then the memo starts again).
MAX_ADDRESS_MEMO = 65536
#: Linux's SO_RXQ_OVFL (socket(7)); Python's socket module does not name it.
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)



def parse_allow(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ConfigError(f"--statsd-allow: {part!r} is not a network (10.0.0.0/8)") from None
    return networks


def parse_routes(text: str) -> list[tuple[str, str]]:
    """``checkout.=shop,api.=api`` -> [(prefix, bucket)], longest prefix first."""
    routes = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        prefix, sep, bucket = part.partition("=")
        if not sep or not prefix or not bucket.strip():
            raise ConfigError(f"--statsd-routes: {part!r} is not PREFIX=BUCKET")
        routes.append((prefix, bucket.strip()))
    return sorted(routes, key=lambda route: len(route[0]), reverse=True)


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ConfigError(f"--statsd-percentiles: {text!r} is not numbers like 90,99") from None
    if not all(0.0 < p < 100.0 for p in values):
        raise ConfigError("--statsd-percentiles: each must be between 0 and 100")
    return values


class _Stream(asyncio.Protocol):
    """One TCP connection: newline-delimited statsd lines."""

    def __init__(self, listener: StatsdListener) -> None:
        self.listener = listener
        self.lines = LineBuffer(listener.rejected)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.listener.tcp_connections += 1
        if not self.listener.allowed(peer[0] if peer else ""):
            self.listener.rejected["source_not_allowed"] += 1
            transport.abort()

    def data_received(self, data: bytes) -> None:
        lines = self.lines.feed(data)
        if lines:
            self.listener.deliver(self.listener.parser.parse(lines))

    def eof_received(self) -> bool:
        self._last_line()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._last_line()

    def _last_line(self) -> None:
        rest = self.lines.close()
        if rest:
            self.listener.deliver(self.listener.parser.parse(rest))


class StatsdListener:
    """The statsd side of a server (module docstring); ``start()``, then ``stop()``."""

    def __init__(self, server: Server) -> None:
        config = server.config
        assert config.statsd is not None
        self.server = server
        try:
            self.host, self.port = parse_address(config.statsd, "--statsd")
            self.graphite = (
                parse_address(config.statsd_graphite, "--statsd-graphite")
                if config.statsd_graphite else None
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.allow = parse_allow(config.statsd_allow)
        self.routes = parse_routes(config.statsd_routes)
        self.percentiles = parse_percentiles(config.statsd_percentiles)
        if config.statsd_flush_interval <= 0:
            raise ConfigError("--statsd-flush-interval must be more than 0 seconds")
        if config.statsd_receive_buffer <= 0:
            raise ConfigError("--statsd-receive-buffer must be more than 0 bytes")
        self.default_bucket = config.statsd_bucket
        #: Every bucket the listener writes to: the default one and the routes'.
        self.bucket_names = sorted({self.default_bucket, *(b for _, b in self.routes)})
        self.rejected: collections.Counter[str] = collections.Counter()
        self.parser = StatsdParser(self.rejected)
        self.datagrams = 0
        self.tcp_connections = 0
        self.metrics = 0
        self.flushes = 0
        self.kernel_drops_seen = 0
        self.receive_buffer = 0
        self.graphite_sends = 0
        self.graphite_lines = 0
        self.graphite_failures = 0
        self.graphite_last_error: str | None = None
        self._graphite_log = LogLimiter()
        self._allowed: dict[str, bool] = {}
        self._routed: dict[str, str] = {}
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Future[None]] = set()
        self._graphite_thread = ThreadPoolExecutor(1, thread_name_prefix="bucketly-graphite")

    # -- start and stop --------------------------------------------------------------------

    async def bind(self) -> None:
        """Open the UDP socket and the TCP listener (before the database opens: a port in
        use fails the start early). Port 0 takes a free one for both."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            asked = self.server.config.statsd_receive_buffer
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, asked)
            # Linux reports double what it grants (socket(7)): its bookkeeping.
            self.receive_buffer = udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
            with contextlib.suppress(OSError):
                udp.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            udp.bind((self.host, self.port))
            udp.setblocking(False)
            port = udp.getsockname()[1]
            self._tcp = await loop.create_server(
                lambda: _Stream(self), self.host, port, reuse_address=True, start_serving=False
            )
        except BaseException:
            udp.close()
            raise
        self._udp = udp
        self.port = port
        if self.receive_buffer < self.server.config.statsd_receive_buffer:
            log.warning(
                "statsd: the kernel granted a UDP receive buffer of %d bytes, not the %d asked "
                "(--statsd-receive-buffer): raise net.core.rmem_max to allow more",
                self.receive_buffer, self.server.config.statsd_receive_buffer,
            )

    async def start(self) -> None:
        """Make the missing statsd buckets, then read and flush."""
        server = self.server
        for name in self.bucket_names:
            bucket = server.buckets.get(name)
            if bucket is None:
                await self._create_bucket(name)
            elif bucket.row.durable:
                raise ConfigError(
                    f"--statsd writes to bucket {name!r}, which is durable: the statsd "
                    "listener writes only to in-memory buckets (docs/statsd.md)"
                )
        self._configure_handlers()
        loop = asyncio.get_running_loop()
        assert self._udp is not None and self._tcp is not None
        loop.add_reader(self._udp.fileno(), self._read_datagrams)
        await self._tcp.start_serving()
        self._flusher = loop.create_task(self._flush_every())
        log.info(
            "statsd listening on udp and tcp %s:%d (buckets: %s; flush every %gs%s)",
            self.host, self.port, ", ".join(self.bucket_names),
            server.config.statsd_flush_interval,
            f"; graphite {self.graphite[0]}:{self.graphite[1]}" if self.graphite else "",
        )

    async def _create_bucket(self, name: str) -> None:
        from ..buckets import Bucket

        server = self.server
        info = server.handlers.get("StatsdMetrics")
        if info is None or not issubclass(info.cls, StatsdMetrics):
            raise ConfigError(
                f"--statsd needs bucket {name!r}, which does not exist, and the handlers module "
                "defines no StatsdMetrics to create it with: add "
                "'from bucketly.statsd import StatsdMetrics' to it, or create the bucket"
            )
        row = BucketRow(name, "StatsdMetrics", {"percentiles": list(self.percentiles)}, "memory",
                        time.time())
        bucket = Bucket(row, info)
        if bucket.broken:
            raise ConfigError(bucket.broken)
        await server.db.insert_bucket(row)
        server.add_bucket(bucket)
        log.info("statsd: created bucket %r (handler StatsdMetrics)", name)

    def _configure_handlers(self) -> None:
        for name in self.bucket_names:
            bucket = self.server.buckets.get(name)
            if bucket is not None and isinstance(bucket.handler, StatsdMetrics):
                bucket.handler.percentiles = self.percentiles

    def close(self) -> None:
        """Stop reading (shutdown's first step)."""
        if self._udp is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._udp.fileno())
        if self._tcp is not None:
            self._tcp.close()
        if self._flusher is not None:
            self._flusher.cancel()

    async def stop(self) -> None:
        """After close(): take what is left in the socket, flush a last time, wait for the
        Graphite sends (each bounded by GRAPHITE_TIMEOUT)."""
        if self._udp is not None:
            self._read_datagrams()
            self._udp.close()
        if self._tcp is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 1.0)
        if self._flusher is not None:
            self.flush()
        if self._sends:
            await asyncio.wait(self._sends, timeout=GRAPHITE_TIMEOUT * 2)
        self._graphite_thread.shutdown(wait=False, cancel_futures=True)

    # -- ingestion -------------------------------------------------------------------------

    def allowed(self, host: str) -> bool:
        memo = self._allowed.get(host)
        if memo is not None:
            return memo
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            verdict = False
        else:
            mapped = getattr(address, "ipv4_mapped", None)
            if mapped is not None:
                address = mapped
            verdict = any(address in network for network in self.allow)
        if len(self._allowed) >= MAX_ADDRESS_MEMO:
            self._allowed.clear()
        self._allowed[host] = verdict
        return verdict

    def _read_datagrams(self) -> None:
        udp = self._udp
        if udp is None:
            return
        rejected = self.rejected
        parse = self.parser.parse
        allowed = self._allowed
        recvmsg = udp.recvmsg
        ancillary = socket.CMSG_SPACE(4)
        metrics: list[Metric] = []
        count = 0
        for _ in range(MAX_DATAGRAMS_PER_READ):
            try:
                data, anc, _flags, peer = recvmsg(MAX_DATAGRAM, ancillary)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # e.g. ICMP errors reported on the socket: nothing to read
            count += 1
            if anc:
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(payload) >= 4:
                        self.kernel_drops_seen = struct.unpack("=I", payload[:4])[0]
            host = peer[0]
            verdict = allowed.get(host)
            if verdict is None:
                verdict = self.allowed(host)
            if not verdict:
                rejected["source_not_allowed"] += 1
                continue
            metrics += parse(data)
        self.datagrams += count
        if metrics:
            self.deliver(metrics)

    def deliver(self, metrics: list[Metric]) -> None:
        """Hand metrics to their buckets, one ``apply`` per bucket."""
        self.metrics += len(metrics)
        if not self.routes:
            self._apply(self.default_bucket, metrics)
            return
        routed: dict[str, list[Metric]] = {}
        memo = self._routed
        for metric in metrics:
            target = memo.get(metric.name)
            if target is None:
                target = self._route(metric.name)
            batch = routed.get(target)
            if batch is None:
                routed[target] = [metric]
            else:
                batch.append(metric)
        for target, batch in routed.items():
            self._apply(target, batch)

    def _route(self, name: str) -> str:
        target = self.default_bucket
        for prefix, bucket in self.routes:
            if name.startswith(prefix):
                target = bucket
                break
        if len(self._routed) >= MAX_ADDRESS_MEMO:
            self._routed.clear()
        self._routed[name] = target
        return target

    def _apply(self, name: str, metrics: list[Metric]) -> None:
        bucket = self.server.buckets.get(name)
        if bucket is None or bucket.broken is not None:
            self.rejected["unknown_bucket"] += len(metrics)
            return
        if bucket.journal is not None:
            self.rejected["durable_bucket"] += len(metrics)
            return
        try:
            bucket.apply(metrics)
        except HandlerError:
            # Bucket.apply counted and logged it (rate-limited); the lines are lost: count them.
            self.rejected["handler_error"] += len(metrics)

    # -- flushes ---------------------------------------------------------------------------

    async def _flush_every(self) -> None:
        interval = self.server.config.statsd_flush_interval
        loop = asyncio.get_running_loop()
        deadline = loop.time() + interval
        while True:
            await asyncio.sleep(max(deadline - loop.time(), 0.0))
            deadline += interval
            try:
                self.flush(interval)
            except Exception:
                log.exception("statsd: internal error in a flush")

    def flush(self, seconds: float | None = None) -> None:
        """Close the interval of every statsd bucket; send the result to Graphite.

        ``seconds``: the interval's length for rates (the flush interval; None at shutdown,
        whose last interval is shorter: its actual length)."""
        now = time.time()
        self._configure_handlers()  # a reload makes new handler instances
        closed = []
        for name in self.bucket_names:
            bucket = self.server.buckets.get(name)
            flush = getattr(bucket.handler, "statsd_flush", None) if bucket is not None else None
            if bucket is None or bucket.broken is not None or flush is None:
                continue
            try:
                closed.append(flush(now, seconds))
            except BaseException as exc:
                bucket.errors += 1
                log.error("statsd: bucket %r: statsd_flush raised %s: %s", name,
                          type(exc).__name__, exc)
        self.flushes += 1
        if self.graphite is None or not closed:
            return
        loop = asyncio.get_running_loop()
        send = loop.run_in_executor(self._graphite_thread, self._send_graphite, closed)
        self._sends.add(send)
        send.add_done_callback(self._sends.discard)

    def _send_graphite(self, intervals: list[Any]) -> None:
        """In the Graphite thread: render and send one flush (its intervals never change)."""
        assert self.graphite is not None
        lines = [line for interval in intervals
                 for line in graphite_lines(interval, self.percentiles)]
        if not lines:
            return
        payload = ("\n".join(lines) + "\n").encode()
        try:
            with socket.create_connection(self.graphite, timeout=GRAPHITE_TIMEOUT) as sock:
                sock.sendall(payload)
        except OSError as exc:
            self.graphite_failures += 1
            self.graphite_last_error = f"{type(exc).__name__}: {exc}"
            if self._graphite_log.ready():
                log.warning("statsd: sending %d lines to graphite %s:%d failed: %s (%d "
                            "failed sends so far; not retried)", len(lines), *self.graphite,
                            self.graphite_last_error, self.graphite_failures)
            return
        self.graphite_sends += 1
        self.graphite_lines += len(lines)

    # -- reporting -------------------------------------------------------------------------

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket (its receive buffer was full)."""
        drops = self.kernel_drops_seen
        if self._udp is not None and self._udp.fileno() >= 0:
            with contextlib.suppress(OSError, ValueError):
                drops = max(drops, _proc_udp_drops(os.fstat(self._udp.fileno()).st_ino))
        return drops

    def statistics(self) -> dict[str, Any]:
        rejected = {reason: 0 for reason in (*REJECT_REASONS, *LISTENER_REASONS)}
        rejected.update(self.rejected)
        return {
            "address": [self.host, self.port],
            "buckets": self.bucket_names,
            "receive_buffer": self.receive_buffer,
            "datagrams": self.datagrams,
            "tcp_connections": self.tcp_connections,
            "metrics": self.metrics,
            "rejected": rejected,
            "kernel_drops": self.kernel_drops(),
            "flushes": self.flushes,
            "graphite": None if self.graphite is None else {
                "address": list(self.graphite),
                "sends": self.graphite_sends,
                "lines": self.graphite_lines,
                "failures": self.graphite_failures,
                "last_error": self.graphite_last_error,
            },
        }


def _proc_udp_drops(inode: int) -> int:
    """The ``drops`` column of /proc/net/udp{,6} for the socket ``inode`` (0 if not found)."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as table:
                next(table, None)
                for row in table:
                    fields = row.split()
                    if len(fields) >= 13 and fields[9] == str(inode):
                        return int(fields[-1])
        except OSError:
            continue
    return 0
