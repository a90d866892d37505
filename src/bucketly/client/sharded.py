"""``ShardedClient`` and ``AsyncShardedClient``: one client over several bucketlyd servers.

``Client(servers=["h1:8484", "h2:8484"], ...)`` (and ``AsyncClient(servers=...)``) returns one
of these. Each holds an ordinary single-server client per server and moves calls between them
and the ``Router`` (routing.py), which decides where each bucket and event goes and how the
answers of several servers make one. These shells only run the calls the router asks for: in
parallel on threads (sync) or with ``gather`` (asyncio). Commands are the ones of
``Commands``, written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import BucketlyError
from .commands import Commands
from .routing import CLOSE, CONNECT, FLUSH, Call, Plan, Route, Router, parse_server

if TYPE_CHECKING:
    # Given by ``Client.__new__`` / ``AsyncClient.__new__`` (``client_class``), which make
    # these: imported here, they would make an import circle.
    from .aio import AsyncClient
    from .sync import Client

__all__ = ["AsyncShardedClient", "RoutedCommands", "ShardedClient"]


#: Ops after which a bucket's route is learnt again (it may live elsewhere now).
_RELEARN = frozenset({"create_bucket", "delete_bucket"})


class RoutedCommands(Commands):
    """The commands only a client over several servers has (and ``Commands``' others)."""

    def view_partial(self, bucket: str, name: str, /, **args: Any) -> Any:
        """Like ``view``, but a partitioned bucket's partitions that cannot answer are left out
        instead of raising: returns a ``PartialResult`` whose ``missing`` maps each server
        left out to why (empty when all answered) and whose ``value`` merges the others."""
        return self._call("view", {"bucket": bucket, "view": name, "args": args, "partial": True})

    def dump_partitions(self, bucket: str) -> Any:
        """The dump of each partition of ``bucket``, as ``{"host:port": dump}`` (a bucket on
        one server: its dump)."""
        return self._call("dump", {"bucket": bucket, "partitions": True})

    def dump_partial(self, bucket: str) -> Any:
        """Like ``dump`` (merged), leaving out partitions that cannot answer: a
        ``PartialResult``, as ``view_partial``."""
        return self._call("dump", {"bucket": bucket, "partial": True})


def _clients_kwargs(
    servers: Sequence[str], make: Callable[..., Any], kwargs: dict[str, Any]
) -> list[Any]:
    return [make(*parse_server(server), **kwargs) for server in servers]


class ShardedClient(RoutedCommands):
    """A blocking client over several servers; see ``Client`` for what each method does.

    ``servers`` is a list of ``"host:port"``: every client of the same buckets must give the
    same list, spelt the same (it decides where each bucket lives). ``key_functions`` maps
    names to functions ``event -> key`` for buckets created with ``partition_function``.
    ``flush()`` waits for every server and raises naming any that failed; the others are
    flushed all the same. Make one with ``Client(servers=[...], ...)``; the other keyword
    arguments (``tls``, ``batch_size``, ``linger``, ``timeout``...) go to each server's client.
    """

    def __init__(
        self,
        servers: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        *,
        client_class: type[Client],
        key_functions: dict[str, Callable[[Any], Any]] | None = None,
        connect: bool = True,
        **kwargs: Any,
    ) -> None:
        self._router = Router(servers, key_functions)
        self.servers = self._router.servers
        self.user = user
        self.clients: list[Client] = _clients_kwargs(
            self.servers,
            client_class,
            {"user": user, "password": password, "connect": False, **kwargs},
        )
        self._routes = self._router.routes
        #: Bucket -> the callable that sends one of its events (``Route.bind``).
        self._senders: dict[str, Callable[[str, Any], Any]] = {}
        self._pool: ThreadPoolExecutor | None = None
        if connect:
            try:
                self.connect()
            except BaseException:
                self._shutdown()
                raise

    @property
    def session(self) -> dict[str, Any] | None:
        """Login details from the first server (every server has its own users)."""
        return self.clients[0].session

    def connect(self) -> None:
        """Connect to every server (in parallel); raises naming those that cannot be reached."""
        self._drive(self._router.flush(CONNECT))

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self.close()
        except BucketlyError:
            if exc_info[0] is None:
                raise

    def close(self) -> None:
        """Flush and close every server's client; raises naming those that failed (their
        ``ConnectionLost.unacknowledged`` lists what was not delivered). Idempotent."""
        try:
            self._drive(self._router.flush(CLOSE))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # -- sending ------------------------------------------------------------------------------

    def send(self, bucket: str, event: Any) -> None:
        """Queue ``event`` for ``bucket``, on the server that owns the bucket (or, partitioned,
        the event's key). Errors of buffered sends are raised by the next ``flush()``."""
        send = self._senders.get(bucket)
        if send is None:
            route = self._route(bucket)
            send = route.bind([client.send for client in self.clients])
            if bucket in self._routes:  # learnt for good, not a guess for a missing bucket
                self._senders[bucket] = send
        send(bucket, event)

    def send_many(self, bucket: str, events: list[Any]) -> None:
        """Queue many events for ``bucket`` (each to its server, in order per server)."""
        route = self._routes.get(bucket) or self._route(bucket)
        if route.owner is not None:
            self.clients[route.owner].send_many(bucket, events)
            return
        for index, part in _split(route, events, len(self.clients)):
            self.clients[index].send_many(bucket, part)

    def flush(self) -> None:
        """Write everything buffered, to every server, and return once all of it is
        acknowledged; raises the first failure, naming its server (``exc.server``; all of
        them in ``exc.failures``), after waiting for the others."""
        self._drive(self._router.flush())

    def _route(self, bucket: str) -> Route:
        route: Route = self._drive(self._router.route(bucket))
        return route

    # -- running the router's calls -----------------------------------------------------------

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        if op in _RELEARN:
            self._senders.pop(args["bucket"], None)
        return self._drive(self._router.run(op, args))

    def _drive(self, plan: Plan) -> Any:
        try:
            calls = next(plan)
            while True:
                calls = plan.send(self._run(calls))
        except StopIteration as stop:
            return stop.value

    def _run(self, calls: list[Call]) -> list[Any]:
        if len(calls) == 1:
            return [self._one(calls[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self.clients), "bucketly-fan-out")
        return list(self._pool.map(self._one, calls))

    def _one(self, call: Call) -> Any:
        index, op, args = call
        client = self.clients[index]
        try:
            if op == FLUSH:
                return client.flush()
            if op == CONNECT:
                return client.connect()
            if op == CLOSE:
                return client.close()
            return client._call(op, args)
        except BucketlyError as exc:
            return exc


class AsyncShardedClient(RoutedCommands):
    """The asyncio client over several servers: ``ShardedClient``'s methods, awaited. Make
    one with ``AsyncClient(servers=[...], ...)``."""

    def __init__(
        self,
        servers: Sequence[str],
        user: str | None = None,
        password: str | None = None,
        *,
        client_class: type[AsyncClient],
        key_functions: dict[str, Callable[[Any], Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self._router = Router(servers, key_functions)
        self.servers = self._router.servers
        self.user = user
        self.clients: list[AsyncClient] = _clients_kwargs(
            self.servers, client_class, {"user": user, "password": password, **kwargs}
        )
        self._routes = self._router.routes
        self._senders: dict[str, Callable[[str, Any], Any]] = {}

    async def __aenter__(self) -> AsyncShardedClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.close()
        except BucketlyError:
            if exc_info[0] is None:
                raise

    async def connect(self) -> None:
        """Connect to every server; raises naming those that cannot be reached."""
        await self._drive(self._router.flush(CONNECT))

    async def close(self) -> None:
        """Flush and close every server's client; see ``ShardedClient.close``."""
        await self._drive(self._router.flush(CLOSE))

    async def send(self, bucket: str, event: Any) -> None:
        """Queue ``event`` for ``bucket``; see ``ShardedClient.send``."""
        send = self._senders.get(bucket)
        if send is None:
            route = await self._drive(self._router.route(bucket))
            send = route.bind([client.send for client in self.clients])
            if bucket in self._routes:
                self._senders[bucket] = send
        await send(bucket, event)

    async def send_many(self, bucket: str, events: list[Any]) -> None:
        """Queue many events for ``bucket``; see ``ShardedClient.send_many``."""
        route = self._routes.get(bucket) or await self._drive(self._router.route(bucket))
        if route.owner is not None:
            await self.clients[route.owner].send_many(bucket, events)
            return
        for index, part in _split(route, events, len(self.clients)):
            await self.clients[index].send_many(bucket, part)

    async def flush(self) -> None:
        """Write everything buffered and wait for every server; see ``ShardedClient.flush``."""
        await self._drive(self._router.flush())

    async def _call(self, op: str, args: dict[str, Any]) -> Any:
        if op in _RELEARN:
            self._senders.pop(args["bucket"], None)
        return await self._drive(self._router.run(op, args))

    async def _drive(self, plan: Plan) -> Any:
        try:
            calls = next(plan)
            while True:
                outcomes = await asyncio.gather(*(self._one(call) for call in calls))
                calls = plan.send(list(outcomes))
        except StopIteration as stop:
            return stop.value

    async def _one(self, call: Call) -> Any:
        index, op, args = call
        client = self.clients[index]
        try:
            if op == FLUSH:
                return await client.flush()
            if op == CONNECT:
                return await client.connect()
            if op == CLOSE:
                return await client.close()
            return await client._call(op, args)
        except BucketlyError as exc:
            return exc


def _split(route: Route, events: list[Any], servers: int) -> list[tuple[int, list[Any]]]:
    """``events`` by the server of their key, each part in the order given."""
    parts: list[list[Any]] = [[] for _ in range(servers)]
    server_for = route.server_for
    for event in events:
        parts[server_for(event)].append(event)
    return [(index, part) for index, part in enumerate(parts) if part]
