"""bucketly: send events to buckets; aggregate them in memory with your own Python handlers.

The public surface: ``Client`` and ``AsyncClient`` to talk to a bucketlyd server (or, given
``servers=[...]``, to several: ``ShardedClient``, ``AsyncShardedClient``), ``Handler``,
``view``, ``every`` and ``Job`` to write handlers, ``UniqueIndex`` (distinct pairs per key, with a
native core) to write them fast, and the errors in ``bucketly.errors``.
"""

__version__ = "0.1.0"

from .client import AsyncClient, AsyncShardedClient, Client, PartialResult, ShardedClient
from .errors import (
    AuthFailed,
    AuthRequired,
    BadArgument,
    BucketExists,
    BucketlyConnectionError,
    BucketlyError,
    ConnectionLost,
    HandlerError,
    NotMergeable,
    PermissionDenied,
    RequestError,
    RoutingError,
    StorageError,
    TooManyAttempts,
    UnknownBucket,
    UnknownHandler,
    UnknownUser,
    UnknownView,
    UserExists,
)
from .handlers import Handler, Job, every, view
from .unique import UniqueIndex, speedups_available

__all__ = [
    "AsyncClient",
    "AsyncShardedClient",
    "AuthFailed",
    "AuthRequired",
    "BadArgument",
    "BucketExists",
    "BucketlyConnectionError",
    "BucketlyError",
    "Client",
    "ConnectionLost",
    "Handler",
    "HandlerError",
    "Job",
    "NotMergeable",
    "PartialResult",
    "PermissionDenied",
    "RequestError",
    "RoutingError",
    "ShardedClient",
    "StorageError",
    "TooManyAttempts",
    "UniqueIndex",
    "UnknownBucket",
    "UnknownHandler",
    "UnknownUser",
    "UnknownView",
    "UserExists",
    "__version__",
    "every",
    "speedups_available",
    "view",
]
