"""The Python clients: ``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio); over
several servers, ``ShardedClient`` and ``AsyncShardedClient`` (``Client(servers=[...])``)."""

from .aio import AsyncClient
from .commands import DEFAULT_HOST, DEFAULT_PORT
from .routing import PartialResult
from .sharded import AsyncShardedClient, ShardedClient
from .sync import Client

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "AsyncClient",
    "AsyncShardedClient",
    "Client",
    "PartialResult",
    "ShardedClient",
]
