"""Every client command, written once and shared by ``Client`` and ``AsyncClient``.

A command builds an op and its arguments and hands them to ``self._call``; the sync client's
``_call`` returns the result, the asyncio client's returns an awaitable of it. So each command
exists in one place, with one docstring (redis-py's pattern, without its parser twins).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Commands"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8484


class Commands:
    def _call(self, op: str, args: dict[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def ping(self) -> Any:
        """Round-trip to the server; returns ``"pong"``."""
        return self._call("ping", {})

    def view(self, bucket: str, name: str, /, **args: Any) -> Any:
        """Call the view ``name`` of ``bucket`` with keyword arguments; return its result.

        Events sent before on this client are written first, so the view sees them.
        """
        return self._call("view", {"bucket": bucket, "view": name, "args": args})

    def dump(self, bucket: str) -> Any:
        """Return the whole state of ``bucket`` (its handler's ``dump()``)."""
        return self._call("dump", {"bucket": bucket})

    def create_bucket(
        self,
        name: str,
        handler: str,
        config: dict[str, Any] | None = None,
        durable: bool = False,
    ) -> Any:
        """Create bucket ``name`` using ``handler`` (a class of the server's handlers module).

        ``config`` is passed to the handler's ``__init__``. Returns the bucket's info.
        Raises ``BucketExists``, ``UnknownHandler`` or ``HandlerError`` (config rejected).
        """
        args: dict[str, Any] = {"bucket": name, "handler": handler, "durable": durable}
        if config is not None:
            args["config"] = config
        return self._call("create_bucket", args)

    def delete_bucket(self, name: str) -> Any:
        """Delete bucket ``name``: its definition and its state."""
        return self._call("delete_bucket", {"bucket": name})

    def buckets(self) -> Any:
        """List the buckets you hold any permission on, as info maps."""
        return self._call("list_buckets", {})

    def bucket_info(self, name: str) -> Any:
        """Describe bucket ``name``: handler, config, durable flag, events, job statistics."""
        return self._call("bucket_info", {"bucket": name})

    def handlers(self) -> Any:
        """List the handlers the server's handlers module defines."""
        return self._call("list_handlers", {})

    def whoami(self) -> Any:
        """Return the authenticated user and their permissions."""
        return self._call("whoami", {})

    def change_password(self, old_password: str, new_password: str) -> Any:
        """Change the authenticated user's own password."""
        return self._call(
            "change_password", {"old_password": old_password, "new_password": new_password}
        )

    def stats(self) -> Any:
        """Server statistics: connections, events, per-bucket counters and job status."""
        return self._call("stats", {})
