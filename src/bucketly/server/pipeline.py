"""A connection's durable sends waiting for their commit, and the replies queued behind them.

Sans-I/O: the connection (connection.py) feeds it sends as they are queued on the journal and
replies that must keep their place in the order (an error, a resend applied already), awaits the
head's commit, and writes what ``take_ready`` gives back. What the sends can take in memory is
counted (``cost``, see ``protocol.limits``), so that the connection stops reading once it is over
``--max-connection-queue``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from ..errors import BucketlyError, InternalError
from ..protocol import ServerProtocol

__all__ = ["MAX_PIPELINED_SENDS", "Pipeline"]

log = logging.getLogger("bucketly.server")

#: Sends to durable buckets one connection may have waiting for their commit before it stops
#: reading more: the client's own pipelining (32 batches by default) fits, and a client that
#: never reads its replies cannot make the server hold an unbounded number of batches.
MAX_PIPELINED_SENDS = 64


class Pipeline:
    """The durable sends of one connection, in request order, with the replies between them."""

    __slots__ = ("_items", "cost", "peer")

    def __init__(self, peer: str) -> None:
        #: ``(id, future, ack, cost)`` of a send, or the bytes of a reply queued in its place.
        self._items: deque[bytes | tuple[int, asyncio.Future[Any], bool, int]] = deque()
        #: What the sends waiting can take in memory, in bytes at most.
        self.cost = 0
        self.peer = peer

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def add_send(self, request_id: int, future: asyncio.Future[Any], ack: bool,
                 cost: int) -> None:
        self._items.append((request_id, future, ack, cost))
        self.cost += cost

    def add_reply(self, reply: bytes) -> None:
        """A reply that must wait for the sends before it."""
        self._items.append(reply)

    def waiting(self) -> int:
        """How many of the sends still wait for their commit (for the metrics)."""
        return sum(1 for item in self._items if type(item) is tuple and not item[1].done())

    def full(self, max_cost: int) -> bool:
        return len(self._items) >= MAX_PIPELINED_SENDS or self.cost >= max_cost

    def head(self) -> asyncio.Future[Any] | None:
        """The commit the next reply waits for, if it waits for one."""
        if self._items and type(head := self._items[0]) is tuple:
            return head[1]
        return None

    def take_ready(self, protocol: ServerProtocol) -> list[bytes]:
        """The replies, in order, of every send settled from the head on (and of the replies
        queued between them), up to the first send still waiting."""
        items = self._items
        out = []
        while items:
            item = items[0]
            if isinstance(item, bytes):
                out.append(item)
                items.popleft()
                continue
            request_id, future, ack, cost = item
            if not future.done():
                break
            items.popleft()
            self.cost -= cost
            exc = future.exception() if not future.cancelled() else InternalError("cancelled")
            if exc is None:
                if ack:
                    out.append(protocol.reply(request_id, future.result()))
            elif isinstance(exc, BucketlyError):
                out.append(protocol.error(request_id, exc))
            else:
                log.error("internal error in a durable send from %s", self.peer, exc_info=exc)
                out.append(protocol.error(request_id, InternalError("internal error")))
        return out
