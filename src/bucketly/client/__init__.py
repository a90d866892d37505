"""The Python clients: ``Client`` (blocking, thread-safe) and ``AsyncClient`` (asyncio)."""

from .aio import AsyncClient
from .commands import DEFAULT_HOST, DEFAULT_PORT
from .sync import Client

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "AsyncClient", "Client"]
