"""The bare ceiling: an asyncio server that only decodes bucketly's frames into the handler.

What any Python daemon could reach on this machine: the same length-prefixed MessagePack frames
that bucketlyd receives, decoded with ormsgpack and applied to the same handler (``UniqueClicks``
unless ``--handler`` names another of ``bench/handlers.py``),
with nothing else (no authentication, greeting, permissions, bucket runtime or durability).
Replies are those of bucketly, one per request, coalesced into one write per ``data_received``.

Ops: ``send`` (``events``, ``ack``) -> ``{"accepted": n}``; ``view`` (``name`` = ``count`` with
``url``, or ``totals``) -> the view's value; ``stats`` -> totals plus the process's RSS.

Run it as ``python -m bench.peers.bare_server --port P --gc tuned [--handler NAME]``; it stops
on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
from typing import Any

import ormsgpack

from bench.handlers import DEFAULT, HANDLERS
from bench.harness import GC_MODES, apply_gc_mode, rss_bytes

_HEADER = struct.Struct(">I")
_UNPACK_OPTIONS = ormsgpack.OPT_NON_STR_KEYS


class BareProtocol(asyncio.Protocol):
    def __init__(self, handler: Any, start_rss: int) -> None:
        self.handler = handler
        self.start_rss = start_rss
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos, size = 0, len(buffer)
        replies = []
        unpack_from, unpackb, header = _HEADER.unpack_from, ormsgpack.unpackb, _HEADER.size
        while size - pos >= header:
            (length,) = unpack_from(buffer, pos)
            end = pos + header + length
            if end > size:
                break
            request = unpackb(buffer[pos + header : end], option=_UNPACK_OPTIONS)
            pos = end
            reply = self.handle(request)
            if reply is not None:
                replies.append(reply)
        if pos:
            del buffer[:pos]
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def handle(self, request: dict[str, Any]) -> bytes | None:
        op = request["op"]
        if op == "send":
            events = request["events"]
            self.handler.on_events(events)
            if not request.get("ack", True):
                return None
            result: Any = {"accepted": len(events)}
        elif op == "view":
            if request["name"] == "count":
                result = self.handler.count(request["url"])
            else:
                result = self.handler.totals()
        elif op == "stats":
            result = self.handler.totals()
            result["rss_delta"] = rss_bytes_self() - self.start_rss
        else:
            body = ormsgpack.packb({"id": request.get("id"), "ok": False,
                                    "error": {"code": "unknown_op", "message": op}})
            return _HEADER.pack(len(body)) + body
        body = ormsgpack.packb({"id": request["id"], "ok": True, "result": result})
        return _HEADER.pack(len(body)) + body


def rss_bytes_self() -> int:
    return rss_bytes(os.getpid())


async def serve(port: int, gc_mode: str, handler_name: str) -> None:
    loop = asyncio.get_running_loop()
    handler = HANDLERS[handler_name]({})
    apply_gc_mode(gc_mode)
    start_rss = rss_bytes_self()
    server = await loop.create_server(
        lambda: BareProtocol(handler, start_rss), "127.0.0.1", port, reuse_address=True
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gc", choices=(*GC_MODES, "off"), default="default")
    parser.add_argument("--handler", choices=sorted(HANDLERS), default=DEFAULT)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.gc, args.handler))


if __name__ == "__main__":
    main()
