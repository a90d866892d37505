"""``AsyncClient``: the asyncio client, with the same methods as ``Client`` (awaited).

One reader task reads replies and settles the future of the request each belongs to; the batch
buffer, the in-flight table, the resends after a broken connection and the settling of batches
are the sans-I/O ``ClientCore`` (core.py) that the sync client uses too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BucketlyConnectionError,
    BucketlyError,
    ConnectionLost,
)
from ..protocol import ErrorReply
from .commands import DEFAULT_HOST, DEFAULT_PORT, Commands
from .common import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LINGER,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_TIMEOUT,
    auth_args,
    client_ssl_context,
)
from .core import ClientCore
from .sharded import AsyncShardedClient

__all__ = ["AsyncClient"]

_READ_SIZE = 256 * 1024


class AsyncClient(Commands):
    """An asyncio connection to a bucketlyd server.

    ``async with AsyncClient(host, port, user=..., password=...) as client:`` connects and
    authenticates (or ``token=...``; ``tls=`` as for ``Client``); every command is awaited
    (``await client.send(...)``, ``await client.flush()``, ``await client.view(...)``). Not safe
    to share between event loops. ``AsyncClient(servers=[...], ...)`` returns an
    ``AsyncShardedClient``, over several servers (see ``Client``).
    """

    def __new__(cls, *args: Any, servers: Sequence[str] | None = None, **kwargs: Any) -> Any:
        # ``AsyncClient(servers=[...])`` is the client over several servers (sharded.py): the same
        # commands, each bucket (or partitioned bucket's event) routed to its server.
        if servers is not None:
            return AsyncShardedClient(servers, *args, client_class=cls, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        user: str | None = None,
        password: str | None = None,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | bool | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        linger: float = DEFAULT_LINGER,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: float | None = DEFAULT_TIMEOUT,
        servers: None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        #: The auth request's arguments: kept, password or token, to log in again on reconnect.
        self._auth = auth_args(user, password, token)
        self._ssl_context = client_ssl_context(tls)
        self.batch_size = batch_size
        self.linger = linger
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._core = ClientCore(f"{host}:{port}")
        self._linger_handle: asyncio.TimerHandle | None = None
        self._lost: ConnectionLost | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self.session: dict[str, Any] | None = None

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.close()
        except BucketlyError:
            if exc_info[0] is None:
                raise

    # -- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and authenticate. Called for you when needed."""
        async with self._connecting:
            if self._writer is not None:
                return
            if self._closed:
                raise BucketlyConnectionError("the client is closed")
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=self._ssl_context),
                    self.timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise BucketlyConnectionError(
                    f"cannot connect to bucketlyd at {self.host}:{self.port}: {exc}"
                ) from None
            core = self._core
            core.connection_made()
            try:
                await asyncio.wait_for(self._read_greeting(reader), self.timeout)
            except BaseException:
                core.protocol = None
                writer.close()
                raise
            self._reader, self._writer = reader, writer
            self._lost = None
            self._reader_task = asyncio.get_running_loop().create_task(self._read_replies())
            if self._auth is not None:
                try:
                    self.session = await self._request("auth", self._auth)
                except BaseException:
                    await self._disconnect()  # a refused login leaves no connection behind
                    raise
            # What was in flight when the last connection broke goes first, in order.
            while self._writer is not None and (resend := core.next_resend()) is not None:
                self._write(*resend)
                await self._drain()

    async def _read_greeting(self, reader: asyncio.StreamReader) -> None:
        core = self._core
        assert core.protocol is not None
        while core.greeting() is None:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise BucketlyConnectionError("the server closed the connection before greeting")
            core.protocol.receive_data(data)

    async def close(self) -> None:
        """Flush what is buffered, wait for its acknowledgement, and close. Idempotent.

        If the server cannot be reached, raises ``ConnectionLost`` whose ``unacknowledged``
        lists every event not acknowledged: still buffered, or kept for resending (those may
        have been applied).
        """
        if self._closed:
            return
        core = self._core
        try:
            if self._writer is not None or core.batch or core.resends.kept:
                await self.flush()
        except BucketlyConnectionError as exc:
            error = core.closing_error(exc)
            raise error from error.__cause__
        finally:
            self._closed = True
            await self._disconnect()

    async def _disconnect(self) -> None:
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        writer, self._writer = self._writer, None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # -- sending ------------------------------------------------------------------------------

    async def send(self, bucket: str, event: Any) -> None:
        """Queue ``event`` for ``bucket``; see ``Client.send``."""
        core = self._core
        batch = core.batch
        if batch and core.batch_bucket == bucket:
            batch.append(event)
            if len(batch) >= self.batch_size:
                await self._write_batch()
            return
        await self.send_many(bucket, [event])

    async def send_many(self, bucket: str, events: list[Any]) -> None:
        """Queue many events for ``bucket``; see ``Client.send_many``."""
        core = self._core
        loop = asyncio.get_running_loop()
        # Another bucket's batch goes first, in order. Again after each write: while it was
        # written, another task may have started a batch of its own.
        while core.start_batch(bucket, loop.time()):
            await self._write_batch()
        if not core.batch:
            self._arm_linger()
        core.batch.extend(events)
        while len(core.batch) >= self.batch_size:
            await self._write_batch(self.batch_size)

    async def flush(self) -> None:
        """Write everything buffered; return once all of it is acknowledged (see ``Client``)."""
        core = self._core
        if core.batch:
            await self._write_batch()
        elif core.resends.kept:
            self._raise_lost()
            await self._ensure_connected()  # which resends them
        waiters = [self._waiters[i] for i in core.in_flight if i in self._waiters]
        if waiters:
            await asyncio.wait(waiters)
        self._raise_lost()
        core.raise_failures()

    async def _write_batch(self, size: int | None = None) -> None:
        # Report a lost connection, and connect, before the events leave the buffer: a batch
        # that could not be written stays buffered instead of vanishing.
        self._raise_lost()
        await self._ensure_connected()
        core = self._core
        request_id, frame = core.take_batch(size)
        if self._linger_handle is not None and not core.batch:
            self._linger_handle.cancel()
            self._linger_handle = None
        self._write(request_id, frame)
        await self._drain()
        if len(core.in_flight) > self.max_in_flight:
            oldest = self._waiters.get(next(iter(core.in_flight)))
            if oldest is not None:
                await asyncio.wait([oldest])
        self._raise_lost()

    def _write(self, request_id: int, frame: bytes) -> None:
        """Write a batch's frame, with a future for its reply."""
        assert self._writer is not None
        self._waiters[request_id] = asyncio.get_running_loop().create_future()
        self._writer.write(frame)

    def _arm_linger(self) -> None:
        if self._linger_handle is None:
            loop = asyncio.get_running_loop()
            self._linger_handle = loop.call_later(self.linger, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger_handle = None
        # Only when connected: reconnecting, or reporting a lost connection, is for a call
        # made by the user, who can see the error.
        if self._core.batch and self._writer is not None and self._lost is None:
            task = asyncio.get_running_loop().create_task(self._write_batch())
            task.add_done_callback(self._linger_done)

    def _linger_done(self, task: asyncio.Task[None]) -> None:
        exc = task.exception() if not task.cancelled() else None
        # A lost connection that lost nothing is reported by the next call, not as a failure.
        if isinstance(exc, BucketlyError) and not (
            isinstance(exc, ConnectionLost) and not exc.unacknowledged
        ):
            self._core.failures.append(exc)

    # -- requests -----------------------------------------------------------------------------

    async def _call(self, op: str, args: dict[str, Any]) -> Any:
        if self._core.batch:
            await self._write_batch()
        self._raise_lost()
        await self._ensure_connected()
        return await self._request(op, args)

    async def _request(self, op: str, args: dict[str, Any]) -> Any:
        assert self._writer is not None
        request_id, data = self._core.request(op, args)
        future = self._waiters[request_id] = asyncio.get_running_loop().create_future()
        self._writer.write(data)
        await self._drain()
        try:
            message = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except ConnectionLost as exc:
            if self._lost is exc:
                self._lost = None  # reported here; flush() need not report it again
            raise
        except TimeoutError:
            await self._fail(
                BucketlyConnectionError(f"no reply from the server within {self.timeout}s")
            )
            self._raise_lost()
            raise
        if isinstance(message, ErrorReply):
            raise message.to_exception()
        return message.result

    async def _drain(self) -> None:
        assert self._writer is not None
        try:
            await self._writer.drain()
        except OSError as exc:
            await self._fail(exc)
            self._raise_lost()

    async def _ensure_connected(self) -> None:
        if self._writer is None:
            await self.connect()

    async def _read_replies(self) -> None:
        reader, core = self._reader, self._core
        protocol = core.protocol
        assert reader is not None and protocol is not None
        cause: BaseException | None = None
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    break
                protocol.receive_data(data)
                while (message := core.next_reply()) is not None:
                    assert message.id is not None  # next_reply raises an error without one
                    future = self._waiters.pop(message.id, None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except (OSError, BucketlyError) as exc:
            cause = exc
        self._lose(cause)

    async def _fail(self, cause: BaseException | None) -> None:
        self._lose(cause)
        await self._disconnect()

    def _lose(self, cause: BaseException | None) -> None:
        """The connection is gone: keep in-flight batches to resend, fail waiting requests."""
        lost = self._core.connection_lost(cause)
        if self._lost is None:
            self._lost = lost
        else:
            self._lost.unacknowledged.extend(lost.unacknowledged)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(lost)
                future.exception()  # mark retrieved: the owner may have stopped waiting
        self._waiters.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _raise_lost(self) -> None:
        if self._lost is not None:
            lost, self._lost = self._lost, None
            raise lost
