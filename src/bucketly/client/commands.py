"""Every client command, written once and shared by ``Client`` and ``AsyncClient``.

A command builds an op and its arguments and hands them to ``self._call``; the sync client's
``_call`` returns the result, the asyncio client's returns an awaitable of it. So each command
exists in one place, with one docstring (redis-py's pattern, without its parser twins).
"""

from __future__ import annotations

from typing import Any

from ..protocol.ops import DEFAULT_AUDIT_LIMIT

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
        *,
        persistence: str | None = None,
        snapshot_interval: float | None = None,
        partition_key: str | None = None,
        partition_function: str | None = None,
    ) -> Any:
        """Create bucket ``name`` using ``handler`` (a class of the server's handlers module).

        ``config`` is passed to the handler's ``__init__``. ``persistence`` says what survives
        the server: ``"memory"`` (the default), ``"snapshot"`` (the state as of its last
        snapshot, taken every ``snapshot_interval`` seconds, default 60, and at shutdown) or
        ``"durable"`` (every acknowledged event; ``durable=True`` says the same). Returns the
        bucket's info. Raises ``BucketExists``, ``UnknownHandler`` or ``HandlerError``
        (config rejected); docs/durability.md compares the levels.

        ``partition_key`` (an event field) or ``partition_function`` (the name of a key
        function given to the clients as ``key_functions``) makes it a partitioned bucket: a
        client with several servers creates it on every one and sends each event to the server
        owning its key (docs/scaling.md).
        """
        args: dict[str, Any] = {"bucket": name, "handler": handler}
        if durable:
            args["durable"] = True
        if persistence is not None:
            args["persistence"] = persistence
        if snapshot_interval is not None:
            args["snapshot_interval"] = snapshot_interval
        if config is not None:
            args["config"] = config
        if partition_key is not None and partition_function is not None:
            raise ValueError("give partition_key or partition_function, not both")
        if partition_key is not None:
            args["partition"] = {"key": partition_key}
        elif partition_function is not None:
            args["partition"] = {"function": partition_function}
        return self._call("create_bucket", args)

    def configure_bucket(
        self,
        name: str,
        *,
        durable: bool | None = None,
        persistence: str | None = None,
        snapshot_interval: float | None = None,
    ) -> Any:
        """Change bucket ``name``'s settings; returns its info (needs ``configure``).

        ``persistence`` moves it between ``"memory"``, ``"snapshot"`` and ``"durable"``:
        becoming durable snapshots its state and logs every later send to disk before
        acknowledging it; leaving durable drops its log (for ``"snapshot"``, after a snapshot
        of its state). ``durable=True``/``False`` is ``"durable"``/``"memory"``.
        ``snapshot_interval``: seconds between its snapshots at the snapshot level.
        """
        args: dict[str, Any] = {"bucket": name}
        if durable is not None:
            args["durable"] = durable
        if persistence is not None:
            args["persistence"] = persistence
        if snapshot_interval is not None:
            args["snapshot_interval"] = snapshot_interval
        return self._call("configure_bucket", args)

    def delete_bucket(self, name: str) -> Any:
        """Delete bucket ``name``: its definition and its state."""
        return self._call("delete_bucket", {"bucket": name})

    def buckets(self) -> Any:
        """List the buckets you hold any permission on, as info maps."""
        return self._call("list_buckets", {})

    def bucket_info(self, name: str) -> Any:
        """Describe bucket ``name``: handler, config, persistence (and its snapshot's age),
        events, job statistics."""
        return self._call("bucket_info", {"bucket": name})

    def handlers(self) -> Any:
        """List the handlers the server's handlers module defines."""
        return self._call("list_handlers", {})

    def handlers_module(self) -> Any:
        """Which version of the handlers module the server runs: its file, SHA-256,
        modification time, when it was loaded, reloads since the start (needs ``stats``)."""
        return self._call("handlers_module", {})

    def reload(self, *, force: bool = False) -> Any:
        """Reload the server's handlers module from its file, every bucket's state carried
        into its new class (needs ``handlers.reload``). Returns, per bucket, its status, how
        long it paused and the bytes of state carried. All or nothing: raises
        ``ReloadFailed``, naming the file, line and bucket, and then nothing changed.
        ``force`` drops the state of buckets whose class is gone instead of refusing."""
        return self._call("reload", {"force": force} if force else {})

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

    # -- users, permissions, tokens, audit ------------------------------------------------------

    def create_user(self, name: str, password: str) -> Any:
        """Create user ``name`` with ``password`` and no permissions (needs ``users.manage``).

        A new user can do nothing until granted permissions: call ``grant`` next.
        Raises ``UserExists``, or ``BadArgument`` for an invalid name or password.
        """
        return self._call("create_user", {"user": name, "password": password})

    def delete_user(self, name: str) -> Any:
        """Delete user ``name`` with their grants and tokens; their connections lose access."""
        return self._call("delete_user", {"user": name})

    def users(self) -> Any:
        """List the users: maps of user, created_at, must_change_password and tokens (a count)."""
        return self._call("list_users", {})

    def set_password(self, name: str, password: str) -> Any:
        """Set the password of user ``name`` (needs ``users.manage``; no old password needed)."""
        return self._call("set_password", {"user": name, "password": password})

    def grant(self, user: str, permission: str, pattern: str = "*") -> Any:
        """Grant ``user`` a ``permission`` on the buckets matching ``pattern`` (a glob).

        Per-bucket permissions: send, view, dump, configure, delete, buckets.create;
        server-wide (pattern ``*`` only): stats, users.manage, grants.manage, audit.read; ``*``
        is all of them. You can only grant what you hold yourself.
        """
        return self._call("grant", {"user": user, "permission": permission, "pattern": pattern})

    def revoke(self, user: str, permission: str, pattern: str = "*") -> Any:
        """Revoke the grant of ``permission`` on exactly ``pattern`` from ``user``."""
        return self._call("revoke", {"user": user, "permission": permission, "pattern": pattern})

    def permissions(self, user: str) -> Any:
        """The grants of ``user``: maps of ``permission`` and ``pattern``."""
        return self._call("permissions", {"user": user})

    def create_token(
        self,
        name: str | None = None,
        *,
        grants: list[tuple[str, str]] | None = None,
        expires_in: int | None = None,
    ) -> Any:
        """Create an API token for yourself; returns ``{"token", "id", "user", "name",
        "created_at", "grants", "expires_at"}``. Needs the ``create_token`` permission.

        ``grants``: narrow the token to some of your grants, as ``(permission, pattern)`` pairs
        (e.g. ``[("send", "clicks")]``); by default it can do all that you can. ``expires_in``:
        seconds until it stops working; by default never. The token is shown only this once:
        store it, then connect with ``token=...`` instead of a user and password. Revoke it with
        ``revoke_token(id)``; changing your password revokes all your tokens.
        """
        args: dict[str, Any] = {} if name is None else {"name": name}
        if grants is not None:
            args["grants"] = [
                {"permission": permission, "pattern": pattern} for permission, pattern in grants
            ]
        if expires_in is not None:
            args["expires_in"] = expires_in
        return self._call("create_token", args)

    def tokens(self, user: str | None = None) -> Any:
        """List your API tokens (or, with ``users.manage``, ``user``'s): ids and names only."""
        return self._call("list_tokens", {} if user is None else {"user": user})

    def revoke_token(self, id: int) -> Any:
        """Revoke the API token ``id``; connections it authenticated lose their access."""
        return self._call("revoke_token", {"token_id": id})

    def audit(self, limit: int = DEFAULT_AUDIT_LIMIT) -> Any:
        """The newest ``limit`` audit entries, newest first (needs ``audit.read``)."""
        return self._call("audit", {"limit": limit})
