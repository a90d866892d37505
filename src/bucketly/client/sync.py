"""``Client``: the blocking client, safe to share between threads.

Theory of operation. ``send()`` only appends to the current batch. A batch is written as one
``send`` frame when it reaches ``batch_size`` events, when ``linger`` seconds have passed since
its first event (a background thread sees to that), before any other command, or on ``flush()``.
Batches are pipelined: the client does not wait for each acknowledgement, it keeps the batch in
``_in_flight`` until the server's reply arrives, reading replies as it goes and blocking only
when more than ``max_in_flight`` batches await theirs. ``flush()`` waits for all of them.

Every batch carries the client's producer id and a sequence number. If the connection breaks,
the call that finds out raises ``ConnectionLost``; the batches that were in flight are kept, and
the next call reconnects and writes them again before anything else. The server recognises the
batches it had applied already and acknowledges them without applying them twice. A batch is
handed to you (``ConnectionLost.unacknowledged``) only when it was in flight on ``RESEND_LIMIT +
1`` broken connections, or when ``close()`` cannot deliver it.
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
import time
from typing import Any

from ..errors import (
    BucketlyConnectionError,
    BucketlyError,
    ConnectionLost,
    ConnectionRefusedByServer,
    ProtocolError,
)
from ..protocol import ClientProtocol, ErrorReply, Greeting, Reply
from .commands import DEFAULT_HOST, DEFAULT_PORT, Commands
from .common import (
    CLIENT_MAX_FRAME_SIZE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_LINGER,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_TIMEOUT,
    Batch,
    Resends,
    auth_args,
    check_greeting,
    client_ssl_context,
    send_failure,
)

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
    """

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
        connect: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self._auth = auth_args(user, password, token)
        self._ssl_context = client_ssl_context(tls)
        self.batch_size = batch_size
        self.linger = linger
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._protocol: ClientProtocol | None = None
        self._batch_bucket: str | None = None
        self._batch: list[Any] = []
        self._batch_started = 0.0
        self._in_flight: dict[int, Batch] = {}
        self._resends = Resends()
        self._failures: list[BucketlyError] = []
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
            self._protocol = ClientProtocol(max_frame_size=CLIENT_MAX_FRAME_SIZE)
            try:
                greeting = self._next_message()
                if isinstance(greeting, ErrorReply):
                    raise greeting.to_exception()
                if not isinstance(greeting, Greeting):
                    raise ProtocolError("the server did not greet first")
                check_greeting(greeting)
                if self._auth is not None:
                    self.session = self._request("auth", self._auth)
                # What was in flight when the last connection broke goes first, in order.
                while self._resends.kept:
                    self._write(self._resends.kept.pop(0))
            except BaseException:
                self._drop_socket()
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
            try:
                if self._sock is not None or self._batch or self._resends.kept:
                    self.flush()
            except BucketlyConnectionError as exc:
                error = self._resends.closing_error(exc, (self._batch_bucket, self._batch))
                self._batch = []
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
            batch = self._batch
            if batch and self._batch_bucket == bucket:
                batch.append(event)
                if len(batch) >= self.batch_size:
                    self._write_batch()
                return
            if batch:
                self._write_batch()  # another bucket's batch goes first, in order
            self._batch_bucket = bucket
            self._batch_started = time.monotonic()
            self._start_linger()
            self._batch.append(event)
            if len(self._batch) >= self.batch_size:
                self._write_batch()
        finally:
            lock.release()

    def send_many(self, bucket: str, events: list[Any]) -> None:
        """Queue many events for ``bucket`` (the same as ``send`` for each, only faster)."""
        with self._lock:
            if self._batch_bucket != bucket and self._batch:
                self._write_batch()
            self._batch_bucket = bucket
            if not self._batch:
                self._batch_started = time.monotonic()
                self._start_linger()
            self._batch.extend(events)
            while len(self._batch) >= self.batch_size:
                self._write_batch(self.batch_size)

    def flush(self) -> None:
        """Write everything buffered and return once all of it is acknowledged by the server.

        Raises the first error any buffered send met since the last flush (its ``bucket``
        and ``events`` attributes say what was refused), or ``ConnectionLost``.
        """
        with self._lock:
            if self._batch:
                self._write_batch()
            elif self._resends.kept:
                self._ensure_connected()  # which resends them
            while self._in_flight:
                self._read_one()
            self._raise_failures()

    def _write_batch(self, size: int | None = None) -> None:
        # Connect before the events leave the buffer: if that fails, they stay buffered.
        self._ensure_connected()
        if size is None or size >= len(self._batch):
            events, self._batch = self._batch, []
        else:
            events, self._batch = self._batch[:size], self._batch[size:]
        bucket = self._batch_bucket
        assert bucket is not None
        self._write(self._resends.new_batch(bucket, events))

    def _write(self, batch: Batch) -> None:
        assert self._protocol is not None
        request_id, data = self._protocol.send_request("send", self._resends.args(batch))
        self._in_flight[request_id] = batch
        self._sendall(data)
        while len(self._in_flight) > self.max_in_flight:
            self._read_one()

    # -- requests -----------------------------------------------------------------------------

    def _call(self, op: str, args: dict[str, Any]) -> Any:
        with self._lock:
            if self._batch:
                self._write_batch()
            self._ensure_connected()
            return self._request(op, args)

    def _request(self, op: str, args: dict[str, Any]) -> Any:
        assert self._protocol is not None
        request_id, data = self._protocol.send_request(op, args)
        self._sendall(data)
        while True:
            message = self._read_one()
            if message is not None and message.id == request_id:
                if isinstance(message, ErrorReply):
                    raise message.to_exception()
                return message.result

    def _read_one(self) -> Reply | ErrorReply | None:
        """Read one reply; settle it if it acknowledges a batch. Returns it."""
        message = self._next_message()
        if isinstance(message, Greeting):
            raise ProtocolError("the server sent a second greeting")
        if message.id is None:
            exc = message.to_exception()
            if isinstance(exc, ConnectionRefusedByServer):
                self._connection_lost(exc)
            raise exc
        batch = self._in_flight.pop(message.id, None)
        if batch is not None and isinstance(message, ErrorReply):
            self._failures.append(send_failure(message, batch.bucket, batch.events))
        return message

    def _next_message(self) -> Greeting | Reply | ErrorReply:
        protocol, sock = self._protocol, self._sock
        assert protocol is not None and sock is not None
        while True:
            message = protocol.next_event()
            if message is not None:
                return message
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
        in_flight = list(self._in_flight.values())
        self._in_flight.clear()
        self._drop_socket()
        raise self._resends.lost(in_flight, f"{self.host}:{self.port}", cause) from cause

    def _drop_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._protocol = None

    def _raise_failures(self) -> None:
        if self._failures:
            first, *rest = self._failures
            self._failures = []
            if rest:
                first.message += f" (and {len(rest)} more failed batches)"
                first.args = (first.message,)
            raise first

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
        with self._lock:
            while not self._closed:
                if not self._batch:
                    # A batch started after this wait began is due no sooner than ``linger``
                    # after it started, so polling at that period never writes one late.
                    self._linger_wakeup.wait(self.linger)
                    continue
                due = self._batch_started + self.linger - time.monotonic()
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
                        self._failures.append(exc)
                    self._park()

    def _park(self) -> None:
        """Wait (lock released) until a user call or a new connection wakes this thread."""
        self._linger_parked = True
        try:
            self._linger_wakeup.wait()
        finally:
            self._linger_parked = False
