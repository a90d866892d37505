"""The bucketlyd daemon: configuration, listener, connections and op dispatch."""

from .config import ServerConfig
from .server import Server

__all__ = ["Server", "ServerConfig"]
