"""``Client``: the blocking client, safe to share between threads.

Theory of operation. ``send()`` only appends to the current batch. A batch is written as one
``send`` frame when it reaches ``batch_size`` events, when ``linger`` seconds have passed since
its first event (a background thread sees to that), before any other command, or on ``flush()``.
Batches are pipelined: the client does not wait for each acknowledgement, it keeps the batch in
``_in_flight`` until the server's reply arrives, reading replies as it goes and blocking only
when more than ``max_in_flight`` batches await theirs. ``flush()`` waits for all of them.

The batch buffer, the in-flight table, the resends after a broken connection and the settling
of replies live in the sans-I/O ``ClientCore`` (core.py), shared with ``AsyncClient``; this
class moves its bytes over a socket, under one lock. If the connection breaks, the call that
finds out raises ``ConnectionLost``, and the next call reconnects and resends.
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..errors import (
    BucketlyConnectionError,
    BucketlyError,
    ConnectionLost,
    ConnectionRefusedByServer,
)
from ..protocol import ErrorReply, Reply
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
from .sharded import ShardedClient

__all__ = ["Client"]

_READ_SIZE = 256 * 1024


class Client(Commands):
    """A connection to a bucketlyd server.

    ``Client(host, port, user=..., password=...)`` connects and authenticates at once; so does
    ``Client(host, port, token=...)`` with an API token (see ``create_token``). ``tls=True``
    connects with TLS, verifying the server against the system's CAs; pass an
    ``ssl.SSLContext`` for your own CA or a client certificate. Use it as a context manager, or
    call ``close()``. ``send()`` is buffered: call ``flush()`` to know that everything sent so
    far has been acknowledged.

    ``Client(servers=["h1:8484", "h2:8484"], user=..., password=...)`` returns a
    ``ShardedClient`` instead: the same methods over several servers, each bucket on one of
    them and a partitioned bucket on all (docs/scaling.md).
    """

    def __new__(cls, *args: Any, servers: Sequence[str] | None = None, **kwargs: Any) -> Any:
        # ``Client(servers=[...])`` is the client over several servers (sharded.py): the same
        # commands, each bucket (or partitioned bucket's event) routed to its server.
        if servers is not None:
            return ShardedClient(servers, *args, client_class=cls, **kwargs)
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
        connect: bool = True,
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
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._core = ClientCore(f"{host}:{port}")
        self._closed = False
        self._linger_wakeup = threading.Condition(self._lock)
        self._linger_thread: threading.Thread | None = None
        self._linger_parked = False
        #: Login details returned by the server (``must_change_password`` etc.).
        self.session: dict[str, Any] | None = None
        if connect:
            self.connect()

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect (and authenticate, if a user was given). Called for you when needed."""
        with self._lock:
            if self._sock is not None:
                return
            if self._closed:
                raise BucketlyConnectionError("the client is closed")
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise BucketlyConnectionError(
                    f"cannot connect to bucketlyd at {self.host}:{self.port}: {exc.strerror or exc}"
                ) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                try:
                    sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
                except OSError as exc:  # ssl.SSLError included
                    sock.close()
                    raise BucketlyConnectionError(
                        f"TLS with bucketlyd at {self.host}:{self.port} failed: {exc}"
                    ) from None
            self._sock = sock
            core = self._core
            core.connection_made()
            try:
                while core.greeting() is None:
                    self._receive()
                if self._auth is not None:
                    self.session = self._request("auth", self._auth)
                # What was in flight when the last connection broke goes first, in order.
                while (resend := core.next_resend()) is not None:
                    self._write(resend[1])
            except BaseException as exc:
                # Stopped by more than a lost connection (an error sent with no id, Ctrl-C):
                # the batches written on it go back to be resent, in order, by the next call.
                # Left in flight, with no connection to read their replies, they were stranded.
                lost = core.connection_lost(exc)
                self._drop_socket()
                if lost.unacknowledged:
                    core.failures.append(lost)  # given up: the next flush() reports them
                raise
            self._linger_wakeup.notify_all()  # a batch may be waiting for this connection

    def close(self) -> None:
        """Flush what is buffered, wait for its acknowledgement, and close. Idempotent.

        If the server cannot be reached, raises ``ConnectionLost`` whose ``unacknowledged``
        lists every event not acknowledged: still buffered, or kept for resending (those may
        have been applied).
        """
        with self._lock:
            if self._closed:
                return
            core = self._core
            try:
                if self._sock is not None or core.batch or core.resends.kept:
                    self.flush()
            except BucketlyConnectionError as exc:
                error = core.closing_error(exc)
                raise error from error.__cause__
            finally:
                self._closed = True
                self._drop_socket()
                self._linger_wakeup.notify_all()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if exc_info[0] is None:
            self.close()
        else:
            # Already failing: don't let a flush error hide the original exception.
            try:
                self.close()
            except BucketlyError:
                pass

    # -- sending ------------------------------------------------------------------------------

    def send(self, bucket: str, event: Any) -> None:
        """Queue ``event`` for ``bucket``. It is written within ``linger`` seconds, in a batch.

        Errors of buffered sends are raised by the next ``flush()`` (or ``close()``).
        """
        # The hot path of every producer: acquire/release instead of ``with`` (which costs as
        # much again as the rest of this method), and the common case first.
        lock = self._lock
        lock.acquire()
        try:
            core = self._core
            batch = core.batch
            if batch and core.batch_bucket == bucket:
                batch.append(event)
                if len(batch) >= self.batch_size:
                    self._write_batch()
                return
            if batch:
                self._write_batch()  # another bucket's batch goes first, in order
            core.start_batch(bucket, time.monotonic())
            self._start_linger()
            core.batch.append(event)
            if len(core.batch) >= self.batch_size:
                self._write_batch()
        finally:
            lock.release()

    def send_many(self, bucket: str, events: list[Any]) -> None:
        """Queue many events for ``bucket`` (the same as ``send`` for each, only faster)."""
        with self._lock:
            core = self._core
            if core.start_batch(bucket, time.monotonic()):
                self._write_batch()  # another bucket's batch goes first, in order
                core.start_batch(bucket, time.monotonic())
            if not core.batch:
                self._start_linger()
            core.batch.extend(events)
            while len(core.batch) >= self.batch_size:
                self._write_batch(self.batch_size)

    def flush(self) -> None:
        """Write everything buffered and return once all of it is acknowledged by the server.

        Raises the first error any buffered send met since the last flush (its ``bucket``
        and ``events`` attributes say what was refused), or ``ConnectionLost``.
        """
        with self._lock:
            core = self._core
            if core.batch:
                self._write_batch()
            elif core.resends.kept:
                self._ensure_connected()  # which resends them
            while core.in_flight:
                self._read_one()
            core.raise_failures()

    def _write_batch(self, size: int | None = None) -> None:
        # Connect before the events leave the buffer: if that fails, they stay buffered.
        self._ensure_connected()
        self._write(self._core.take_batch(size)[1])

    def _write(self, frame: bytes) -> None:
        """Write a batch's frame; wait for replies while too many batches are in flight."""
        self._sendall(frame)
        while len(self._core.in_flight) > self.max_in_flight:
            self._read_one()

    # -- requests -----------------------------------------------------------------------------

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        with self._lock:
            if self._core.batch:
                self._write_batch()
            self._ensure_connected()
            return self._request(op, args)

    def _request(self, op: str, args: dict[str, Any]) -> Any:
        request_id, data = self._core.request(op, args)
        self._sendall(data)
        while True:
            message = self._read_one()
            if message.id == request_id:
                if isinstance(message, ErrorReply):
                    raise message.to_exception()
                return message.result

    def _read_one(self) -> Reply | ErrorReply:
        """Read one reply (the core settles it if it acknowledges a batch). Returns it."""
        core = self._core
        while True:
            try:
                message = core.next_reply()
            except ConnectionRefusedByServer as exc:
                self._connection_lost(exc)
            if message is not None:
                return message
            self._receive()

    def _receive(self) -> None:
        sock, protocol = self._sock, self._core.protocol
        assert sock is not None and protocol is not None
        try:
            data = sock.recv(_READ_SIZE)
        except TimeoutError:
            self._connection_lost(
                BucketlyConnectionError(f"no reply from the server within {self.timeout}s")
            )
        except OSError as exc:
            self._connection_lost(exc)
        if not data:
            self._connection_lost(None)
        protocol.receive_data(data)

    def _sendall(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._connection_lost(exc)

    def _ensure_connected(self) -> None:
        if self._sock is None:
            self.connect()

    def _connection_lost(self, cause: BaseException | None) -> Any:
        self._drop_socket()
        raise self._core.connection_lost(cause) from cause

    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._core.protocol = None

    # -- linger -------------------------------------------------------------------------------

    def _start_linger(self) -> None:
        if self._linger_thread is None:
            self._linger_thread = threading.Thread(
                target=self._linger_loop, name="bucketly-client-linger", daemon=True
            )
            self._linger_thread.start()
        elif self._linger_parked:
            # Only a parked thread needs waking: an idle one looks again within ``linger``.
            # Not notifying on every new batch keeps a send()+flush() loop free of thread
            # switches (it doubled the rate of acknowledged single sends).
            self._linger_wakeup.notify()

    def _linger_loop(self) -> None:
        # Leave Ctrl-C to the main thread, where KeyboardInterrupt can interrupt the user's call.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        core = self._core
        with self._lock:
            while not self._closed:
                if not core.batch:
                    # A batch started after this wait began is due no sooner than ``linger``
                    # after it started, so polling at that period never writes one late.
                    self._linger_wakeup.wait(self.linger)
                    continue
                due = core.due(time.monotonic(), self.linger)
                if due > 0:
                    self._linger_wakeup.wait(due)
                    continue
                if self._sock is None:
                    # Reconnecting is for a call made by the user, who can see its error; the
                    # batch stays buffered until then.
                    self._park()
                    continue
                try:
                    self._write_batch()
                except BucketlyError as exc:
                    # Nobody to raise to on this thread: the next flush() raises it. Wait for
                    # the user's next call rather than retry in a tight loop. A lost connection
                    # that lost nothing is not an error: that call reconnects and resends.
                    if not (isinstance(exc, ConnectionLost) and not exc.unacknowledged):
                        core.failures.append(exc)
                    self._park()

    def _park(self) -> None:
        """Wait (lock released) until a user call or a new connection wakes this thread."""
        self._linger_parked = True
        try:
            self._linger_wakeup.wait()
        finally:
            self._linger_parked = False
