"""How handler state is written into a snapshot: MessagePack, with types it lacks kept.

Handler state is encoded as MessagePack with tagged extension types for what MessagePack has no
type for, so that the default ``snapshot()``/``restore()`` give back a set as a set, a tuple as a
tuple (also inside sets and as map keys), a defaultdict with its factory. Anything else (class
instances, dataclasses, datetimes) is refused: its handler must define ``snapshot()`` and
``restore()``. The extension codes are part of the database file's format: never reuse one.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import ormsgpack

from ..errors import HandlerError
from ..protocol.messages import pack
from ..unique import UNIQUE_INDEX_TYPES, UniqueIndex

if TYPE_CHECKING:
    from .runtime import Bucket

__all__ = ["encode_snapshot", "pack_state", "unpack_state"]

_EXT_SET = 1
_EXT_FROZENSET = 2
_EXT_TUPLE = 3
_EXT_BIG_INT = 4
_EXT_COUNTER = 5
_EXT_DEFAULTDICT = 6
_EXT_DEQUE = 7
_EXT_UNIQUE_INDEX = 8  # [keys, values, pairs] of UniqueIndex.export()

_DEFAULT_FACTORIES: dict[Any, str] = {
    int: "int",
    float: "float",
    str: "str",
    list: "list",
    dict: "dict",
    set: "set",
    collections.Counter: "Counter",
}
_FACTORIES_BY_NAME = {name: factory for factory, name in _DEFAULT_FACTORIES.items()}

_STATE_PACK = (
    ormsgpack.OPT_NON_STR_KEYS
    | ormsgpack.OPT_PASSTHROUGH_TUPLE
    | ormsgpack.OPT_PASSTHROUGH_BIG_INT
    | ormsgpack.OPT_PASSTHROUGH_SUBCLASS
    | ormsgpack.OPT_PASSTHROUGH_DATACLASS
    | ormsgpack.OPT_PASSTHROUGH_DATETIME
    | ormsgpack.OPT_PASSTHROUGH_UUID
    | ormsgpack.OPT_PASSTHROUGH_ENUM
)


def _ext(code: int, value: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(code, pack_state(value))


def _encode_default(value: Any) -> Any:
    kind = type(value)
    if kind is set:
        return _ext(_EXT_SET, list(value))
    if kind is frozenset:
        return _ext(_EXT_FROZENSET, list(value))
    if kind is tuple:
        return _ext(_EXT_TUPLE, list(value))
    if kind is int:  # only those beyond 64 bits reach here
        return ormsgpack.Ext(_EXT_BIG_INT, str(value).encode())
    if kind is collections.Counter:
        return _ext(_EXT_COUNTER, dict(value))
    if kind is collections.defaultdict:
        factory = _DEFAULT_FACTORIES.get(value.default_factory)
        if factory is None:
            raise TypeError(
                f"defaultdict({getattr(value.default_factory, '__name__', value.default_factory)})"
                f" is not supported (factories: {', '.join(_FACTORIES_BY_NAME)})"
            )
        return _ext(_EXT_DEFAULTDICT, [factory, dict(value)])
    if kind is collections.deque:
        return _ext(_EXT_DEQUE, [list(value), value.maxlen])
    if kind in UNIQUE_INDEX_TYPES:
        # Each distinct value once, the pairs as packed indexes: 5 MB for a million pairs of a
        # hundred thousand users, encoded in 6 ms (as {key: [values]}: 12 MB, 43 ms).
        return _ext(_EXT_UNIQUE_INDEX, list(value.export()))
    raise TypeError(f"{kind.__module__}.{kind.__qualname__} is not plain data")


def _decode_ext(code: int, data: bytes) -> Any:
    if code == _EXT_BIG_INT:
        return int(data)
    value = unpack_state(data)
    if code == _EXT_SET:
        return set(value)
    if code == _EXT_FROZENSET:
        return frozenset(value)
    if code == _EXT_TUPLE:
        return tuple(value)
    if code == _EXT_COUNTER:
        return collections.Counter(value)
    if code == _EXT_DEFAULTDICT:
        factory, items = value
        return collections.defaultdict(_FACTORIES_BY_NAME[factory], items)
    if code == _EXT_DEQUE:
        items, maxlen = value
        return collections.deque(items, maxlen)
    if code == _EXT_UNIQUE_INDEX:
        keys, values, pairs = value
        return UniqueIndex.from_export(keys, values, pairs)
    raise ValueError(f"unknown extension type {code} in a snapshot")


def pack_state(value: Any) -> bytes:
    """Encode handler state for a snapshot. Raises ``TypeError`` for what is not plain data.

    Plain data: ``None``, bools, ints (any size), floats, str, bytes, lists, tuples, dicts (any
    hashable plain keys), sets, frozensets, ``collections.Counter``, ``deque``,
    ``defaultdict`` with a factory among int, float, str, list, dict, set and Counter, and
    ``bucketly.UniqueIndex``.
    """
    return ormsgpack.packb(value, default=_encode_default, option=_STATE_PACK)


def unpack_state(data: bytes) -> Any:
    """Decode what ``pack_state`` encoded, with the same types."""
    return ormsgpack.unpackb(data, ext_hook=_decode_ext, option=ormsgpack.OPT_NON_STR_KEYS)


def encode_snapshot(bucket: Bucket) -> tuple[bytes, bytes]:
    """The bucket's state (its handler's ``snapshot()``, packed) and its producer table, as
    bytes to store. Raises ``HandlerError`` if the handler cannot give its state."""
    try:
        state = bucket.handler.snapshot()
    except BaseException as exc:  # handler code: see runtime.py
        raise HandlerError(f"{bucket.row.handler}.snapshot raised {exc!r}") from None
    try:
        data = pack_state(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise HandlerError(
            f"{bucket.row.handler}.snapshot() returned something a snapshot cannot hold: "
            f"{exc}. Give the handler snapshot() and restore() methods that turn its state "
            "into plain data and back (docs/handlers.md)"
        ) from None
    return data, pack(bucket.producer_table())
