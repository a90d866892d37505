"""The arguments of ``send``, checked on its hot path.

``send`` is the one op the connection handles itself, without ``validate_args`` and the op
table (connection.py, ``_send``), because it runs once per batch of events at hundreds of
thousands of batches a second. These functions check its arguments with the same rules and the
same messages as ``bucketly.protocol.OPS["send"]`` would, in the documented order
(docs/protocol.md): the bucket's name first (``send_bucket``), then, once the permission is
checked, the rest (``send_batch``).
"""

from __future__ import annotations

from typing import Any

from ..errors import BadArgument
from ..protocol import OPS, validate_args
from ..protocol.ops import MAX_PRODUCER_LENGTH, MAX_PRODUCER_SEQ

__all__ = ["check_producer", "send_batch", "send_bucket"]

_SEND_KEYS = frozenset(("bucket", "events", "event", "ack", "producer", "seq"))


def send_bucket(args: dict[str, Any]) -> str:
    """The name of the bucket a send is for (refusing an argument ``send`` does not take)."""
    if not args.keys() <= _SEND_KEYS:
        validate_args(OPS["send"], args)
    name = args.get("bucket")
    if type(name) is not str:
        raise BadArgument("send: argument 'bucket' must be a string")
    return name


def send_batch(args: dict[str, Any]) -> tuple[list[Any], bool, str | None, int | None]:
    """A send's events (one ``event`` is a batch of one), ``ack``, ``producer`` and ``seq``."""
    events = args.get("events")
    if events is None:
        if "events" in args:
            raise BadArgument("send: argument 'events' must be an array")
        if "event" not in args:
            raise BadArgument("send needs 'event' (one event) or 'events' (a batch)")
        events = [args["event"]]
    elif type(events) is not list:
        raise BadArgument("send: argument 'events' must be an array")
    elif "event" in args:
        raise BadArgument("send takes 'event' or 'events', not both")
    ack = args.get("ack", True)
    if type(ack) is not bool:
        raise BadArgument("send: argument 'ack' must be a boolean")
    producer = args.get("producer")
    seq = None
    if producer is not None or "seq" in args:
        producer, seq = check_producer(producer, args.get("seq"))
    return events, ack, producer, seq


def check_producer(producer: Any, seq: Any) -> tuple[str, int]:
    """Check a send's ``producer`` and ``seq`` (given together); return them."""
    if type(producer) is not str or not 0 < len(producer) <= MAX_PRODUCER_LENGTH:
        raise BadArgument(
            f"send: 'producer' must be a string of 1 to {MAX_PRODUCER_LENGTH} characters, "
            "given with 'seq'"
        )
    if type(seq) is not int or not 0 <= seq <= MAX_PRODUCER_SEQ:
        raise BadArgument(
            f"send: 'seq' must be an integer from 0 to {MAX_PRODUCER_SEQ}, given with 'producer'"
        )
    return producer, seq
