"""``ServerConfig``: every setting of bucketlyd, with its default and the reason for it.

The command line (bucketly.cli.daemon) is a thin layer that maps flags and environment variables
onto this object; the docs test checks that docs/configuration.md describes every field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..protocol.framing import DEFAULT_MAX_FRAME_SIZE

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
    max_frame_size: int = _option(
        DEFAULT_MAX_FRAME_SIZE,
        "Largest frame a client may send, in bytes; checked from the length header before the "
        "body is read. A larger frame gets a frame_too_large error and the connection is closed.",
    )
    max_connections: int = _option(
        1024,
        "Most client connections at once. One more is sent a too_many_connections error and "
        "closed. Keep it below the process's open-file limit.",
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
