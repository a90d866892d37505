"""The bucketly v1 wire protocol, sans I/O: bytes in, messages out, bytes back.

This package imports no socket, asyncio or sqlite code; see docs/protocol.md for the spec.
"""

from .connection import ClientProtocol, ServerProtocol, encode_request
from .framing import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, FrameDecoder, encode_frame
from .messages import (
    PROTOCOL_VERSION,
    ErrorReply,
    Greeting,
    Reply,
    Request,
    decode_server_message,
    encode_message,
    pack,
    request_from_wire,
    unpack,
)
from .ops import OPS, Arg, Op, check_bucket_name, check_partition, validate_args

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "OPS",
    "PROTOCOL_VERSION",
    "Arg",
    "ClientProtocol",
    "ErrorReply",
    "FrameDecoder",
    "Greeting",
    "Op",
    "Reply",
    "Request",
    "ServerProtocol",
    "check_bucket_name",
    "check_partition",
    "decode_server_message",
    "encode_frame",
    "encode_message",
    "encode_request",
    "pack",
    "request_from_wire",
    "unpack",
    "validate_args",
]
