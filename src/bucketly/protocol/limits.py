"""What a frame costs in memory once decoded, counted before it is decoded.

MessagePack is compact: an empty map is one byte on the wire and a 64-byte dict in memory (72
with its slot in the enclosing array). So a frame within the byte limit can still decode to
seventy times its size: one 16 MiB frame of empty maps once took bucketlyd from 119 to 1,222 MiB.
The server therefore counts the values in a frame before it decodes it (``object_bound``), and
refuses a frame of more than ``max_frame_objects`` values; and it charges every durable send
that waits for its commit ``decoded_cost`` bytes against the caps on what one connection and one
bucket may hold.

Measured with tracemalloc on CPython 3.11 and ormsgpack, the heaviest values per count are a
map holding an empty map (85 bytes a value), a one-character string outside Latin-1 (84 to 88
bytes, with its slot) and an empty map (72); a string's characters take at most as many bytes
as they take on the wire. Hence the bound: a frame of ``n`` values and ``b`` bytes decodes to
at most ``OBJECT_COST * n + b`` bytes.

Nesting needs no limit of its own: the decoder refuses values nested more than 1,024 deep (a
``bad_frame`` error, and the connection goes on).
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_FRAME_OBJECTS", "OBJECT_COST", "decoded_cost", "object_bound"]

from collections.abc import Callable

_native_count: Callable[[bytes, int], int] | None
try:
    from .._speedups import msgpack_objects as _native_count
except ImportError:  # built without a C compiler
    _native_count = None

#: Values (maps, arrays, strings, numbers...: each counts one) a frame may hold by default.
#: A batch of 1,000 events with two fields each holds about 5,000, so batches of a hundred
#: thousand such events fit; decoded, a frame of this many values takes at most about 96 MiB
#: beyond its own bytes (``OBJECT_COST``), against some 1,200 MiB for 16 MiB of empty maps.
DEFAULT_MAX_FRAME_OBJECTS = 1 << 20
#: Bytes one decoded value takes at most, besides its characters or bytes: the measured worst
#: is 88 (see the module docstring), rounded up.
OBJECT_COST = 96


def object_bound(body: bytes, limit: int) -> int:
    """How many values ``body`` holds, or ``limit + 1`` if more than ``limit``.

    Exact with the native extension (a few microseconds for a 1,000-event batch, about a
    millisecond to refuse 16 MiB of empty maps). Without it, a frame of at most ``limit`` bytes
    is not read: its byte count stands for its value count, which it always bounds (every value
    takes one byte at least). Malformed data counts as its byte count: the decoder, which runs
    next, says what is wrong with it.
    """
    if _native_count is not None:
        count = _native_count(body, limit)
        return len(body) if count < 0 else count
    if len(body) <= limit:
        return len(body)
    count = _count(body, limit)
    return len(body) if count < 0 else count


def decoded_cost(body: bytes, objects: int) -> int:
    """Bytes that ``body``, a frame of ``objects`` values, can take at most, itself included."""
    return 2 * len(body) + OBJECT_COST * objects


_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
#: Header byte -> (bytes of the length that follows, extra bytes after it, 1 if str/bin/ext or
#: the number of values each counted element stands for: 1 for arrays, 2 for maps).
_SIZED = {0xC4: (1, 0, 0), 0xC5: (2, 0, 0), 0xC6: (4, 0, 0), 0xD9: (1, 0, 0), 0xDA: (2, 0, 0),
          0xDB: (4, 0, 0), 0xC7: (1, 1, 0), 0xC8: (2, 1, 0), 0xC9: (4, 1, 0),
          0xDC: (2, 0, 1), 0xDD: (4, 0, 1), 0xDE: (2, 0, 2), 0xDF: (4, 0, 2)}


def _count(data: bytes, limit: int) -> int:
    """The pure-Python twin of ``_speedups.msgpack_objects``."""
    pos, end, count, todo = 0, len(data), 0, 1
    while todo:
        if count >= limit:
            return limit + 1
        if pos >= end:
            return -1
        b = data[pos]
        pos += 1
        todo -= 1
        count += 1
        skip = children = 0
        if b <= 0x7F or b >= 0xE0:
            pass
        elif b <= 0x8F:
            children = 2 * (b & 0x0F)
        elif b <= 0x9F:
            children = b & 0x0F
        elif b <= 0xBF:
            skip = b & 0x1F
        elif b in _FIXED:
            skip = _FIXED[b]
        elif b in _SIZED:
            width, extra, per = _SIZED[b]
            if end - pos < width + extra:
                return -1
            length = int.from_bytes(data[pos : pos + width], "big")
            pos += width + extra
            if per:
                children = per * length
            else:
                skip = length
        else:
            return -1  # 0xC1 is never used
        if end - pos < skip:
            return -1
        pos += skip
        todo += children
        if todo > end - pos:
            return -1
    return count
