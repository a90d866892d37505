"""Length-prefixed framing: a 4-byte big-endian unsigned length, then that many bytes.

Sans-I/O: ``FrameDecoder`` is fed bytes with ``receive_data()`` and hands back complete
frame bodies; ``encode_frame()`` turns a body into bytes to write. Nothing here touches a socket.
"""

from __future__ import annotations

import struct

from ..errors import FrameTooLarge

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "HEADER_SIZE", "FrameDecoder", "encode_frame"]

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size

#: Largest frame body accepted by default: 16 MiB. A batch of 1,000 typical events is ~50 KiB,
#: so this leaves room for batches of many thousands while bounding what one frame can make the
#: receiver buffer. It is checked against the length header, before any of the body is read.
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024


def encode_frame(body: bytes) -> bytes:
    """Return ``body`` with its 4-byte length header, ready to write."""
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Split a byte stream into frame bodies, whatever chunks it arrives in.

    Call ``receive_data(data)`` with what the network gave you, then ``next_frame()`` until it
    returns ``None``. A length header over ``max_frame_size`` raises ``FrameTooLarge`` as soon as
    the header is complete; the stream cannot be trusted after that and should be closed.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._pos = 0

    def receive_data(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        if self._pos:
            # Drop consumed bytes lazily: one memmove per receive, not one per frame.
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """Return the next complete frame body, or ``None`` if more data is needed."""
        buffer = self._buffer
        pos = self._pos
        if len(buffer) - pos < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(buffer, pos)
        if length > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {length} bytes is over the maximum frame size of "
                f"{self.max_frame_size} bytes"
            )
        end = pos + HEADER_SIZE + length
        if len(buffer) < end:
            return None
        body = bytes(buffer[pos + HEADER_SIZE : end])
        self._pos = end
        return body

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a started, unfinished frame)."""
        return len(self._buffer) - self._pos
