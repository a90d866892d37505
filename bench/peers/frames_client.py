"""A client that writes pre-encoded bucketly frames: the feeder of the bare ceiling server.

It costs the client almost nothing per event (the frames are encoded before the clock starts),
so what it measures is the server. Each connection keeps up to ``window`` requests in flight and
reads one reply per request; a reply that is not ``ok`` fails the run.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

import ormsgpack

_HEADER = struct.Struct(">I")
#: Requests in flight per connection: enough to keep the server busy while replies travel back.
DEFAULT_WINDOW = 4


async def read_reply(reader: asyncio.StreamReader) -> dict[str, Any]:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    reply = ormsgpack.unpackb(await reader.readexactly(length), option=ormsgpack.OPT_NON_STR_KEYS)
    if not reply.get("ok"):
        raise RuntimeError(f"server replied with an error: {reply!r}")
    return dict(reply)


async def request(port: int, body: dict[str, Any], timeout: float = 60.0) -> Any:
    """Send one request on a new connection and return its result."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        payload = ormsgpack.packb(body)
        writer.write(_HEADER.pack(len(payload)) + payload)
        return (await asyncio.wait_for(read_reply(reader), timeout))["result"]
    finally:
        writer.close()


async def _connection(port: int, frames: list[bytes], sizes: list[int], window: int,
                      per_conn_rate: float | None, deadline: float | None,
                      stop_file: Path | None) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    slots = asyncio.Semaphore(window)
    sent = [0]
    done = False
    wrote = asyncio.Event()

    async def write() -> None:
        start = time.perf_counter()
        due = 0.0
        for i, data in enumerate(frames):
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if stop_file is not None and stop_file.exists():
                break
            if per_conn_rate is not None:
                delay = start + due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                due += sizes[i] / per_conn_rate
            await slots.acquire()
            writer.write(data)
            sent[0] += 1
            wrote.set()
            await writer.drain()
        nonlocal done
        done = True
        wrote.set()

    async def read() -> int:
        acked = events = 0
        while not (done and acked == sent[0]):
            if acked == sent[0]:
                # Nothing in flight: wait for the writer rather than for a reply.
                wrote.clear()
                await wrote.wait()
                continue
            reply = await read_reply(reader)
            events += reply["result"]["accepted"]
            acked += 1
            slots.release()
        return events

    try:
        _, events = await asyncio.gather(write(), read())
    finally:
        writer.close()
    return events


async def feed(port: int, frames: list[bytes], sizes: list[int], connections: int = 1,
               window: int = DEFAULT_WINDOW, rate: float | None = None,
               duration: float | None = None, stop_file: Path | None = None
               ) -> tuple[int, float]:
    """Write ``frames`` round-robin over ``connections``; return (events acknowledged, seconds).

    With ``rate`` (events/s over all connections) the writes are paced, and with ``duration``
    they stop after that many seconds (cycling through ``frames`` if they run out first), or
    as soon as ``stop_file`` exists.
    """
    if duration is not None:
        repeats = 1 + int(duration * (rate or 5e6) / max(1, sum(sizes)))
        frames, sizes = frames * repeats, sizes * repeats
    deadline = None if duration is None else time.perf_counter() + duration
    per_conn = None if rate is None else rate / connections
    start = time.perf_counter()
    counts = await asyncio.gather(*(
        _connection(port, frames[i::connections], sizes[i::connections], window, per_conn,
                    deadline, stop_file)
        for i in range(connections)
    ))
    return sum(counts), time.perf_counter() - start
