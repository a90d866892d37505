"""``FlowControl``: when one connection reads from its socket, and for how long it goes on.

Back-pressure. While a connection is busy with a large backlog, or while its transport's write
buffer is over its high-water mark (a client that does not read its replies: asyncio calls
``pause_writing``), the connection stops reading from the socket, so neither side can make the
server buffer without bound. A client that does not read while its replies pile up past
``--max-write-buffer`` is disconnected (the connection checks ``queued`` and audits it).

Fairness. A connection does at most ``WORK_PER_TURN`` units of work (``FRAME_COST`` per frame,
plus one per event it carries), then yields its turn (``yield_turn``): it stops reading and lets
the event loop serve the others before it goes on. So neither a flood of tiny frames nor a read
full of large batches on one connection holds the others up for more than a couple of
milliseconds.

As uvicorn's ``FlowControl``, this only keeps the flags straight and calls the transport; what
to do next is the connection's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["FRAME_COST", "WORK_PER_TURN", "FlowControl"]

#: Work one connection does before the event loop turns to the others, in events (about a
#: microsecond each in a typical handler): about 1 ms, so that a view on another connection
#: waits little behind a producer sending 1,000-event batches. Measured (bench/run.py, view p99
#: while one connection ingests at 80% of the maximum): 16 ms with 64 frames per turn, 5.4 ms
#: with 2,048 events per turn, 3.6 ms with 1,024, at the same ingest rate within noise.
WORK_PER_TURN = 1024
#: What one frame counts for besides its events: a client pipelining thousands of tiny frames
#: in one read gets 32 of them per turn.
FRAME_COST = 32


class FlowControl:
    """Whether one connection's transport is reading, and whether its peer reads replies."""

    __slots__ = ("read_paused", "transport", "write_paused", "yielded")

    def __init__(self) -> None:
        #: Set when the connection is made.
        self.transport: asyncio.Transport | None = None
        self.read_paused = False
        #: The transport's write buffer is over its high-water mark.
        self.write_paused = False
        #: A turn was yielded (``yield_turn``): reading stays paused until it is taken.
        self.yielded = False

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again, unless the peer is not reading its replies."""
        if self.read_paused and not self.write_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False

    def queued(self) -> int:
        """Bytes of replies written and not yet taken by the peer."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def yield_turn(self, take_turn: Callable[[], None]) -> None:
        """Stop reading and call ``take_turn`` once the event loop has served the others."""
        self.yielded = True
        self.pause_reading()
        asyncio.get_running_loop().call_soon(take_turn)
