"""The statsd listener's defaults, each with its reason (a module of their own, so that
``ServerConfig`` can name them without importing the listener)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_BUCKET",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_PERCENTILES",
    "DEFAULT_RECEIVE_BUFFER",
    "LISTENER_REASONS",
]

#: Where metrics go that no route names: created at start-up (``StatsdMetrics``) if missing.
DEFAULT_BUCKET = "statsd"
#: statsd's own ``flushInterval`` default (10 s).
DEFAULT_FLUSH_INTERVAL = 10.0
#: Loopback only: statsd has no authentication, so only the networks you name may write.
DEFAULT_ALLOW = "127.0.0.0/8,::1/128"
#: The UDP receive buffer asked for: 8 MiB holds ~0.1 s of a 1 Gbit/s burst of datagrams while
#: the server is busy elsewhere (a flush, a dump). Linux grants at most net.core.rmem_max.
DEFAULT_RECEIVE_BUFFER = 8 * 1024 * 1024
#: statsd's ``percentThreshold`` default: ``upper_90``.
DEFAULT_PERCENTILES = "90"

#: What the listener itself refuses, beside the parser's REJECT_REASONS: a datagram or
#: connection from outside --statsd-allow; metrics whose bucket does not exist (deleted) or is
#: durable (the listener writes only to in-memory buckets), or whose handler raised.
LISTENER_REASONS = ("source_not_allowed", "unknown_bucket", "durable_bucket", "handler_error")
