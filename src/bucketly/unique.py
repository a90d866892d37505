"""``UniqueIndex``: the distinct (key, value) pairs a handler has seen, counted per key.

"Unique users per URL", "distinct devices per account": the commonest aggregation there is, and
the one where a plain ``dict[key, set[value]]`` spends most of the daemon's time (a set insert
and a string de-duplication per event). ``UniqueIndex`` does the same job, with the same
answers, from a native core: each distinct key and value is stored once and numbered, each
key keeps the numbers of its values in a compact set of 32-bit integers (inline for one or two),
and ``add_events`` walks a whole batch in C.

    class UniqueClicks(bucketly.Handler):
        def __init__(self, config):
            super().__init__(config)
            self.users = bucketly.UniqueIndex()

        def on_events(self, events):
            self.users.add_events(events, "url", "user")

        @bucketly.view
        def count(self, url):
            return self.users.count(url)

Keys and values are any hashable values, compared as Python compares them (``1``, ``1.0`` and
``True`` are the same value, as in a set). A ``UniqueIndex`` is plain data for durable buckets:
the default ``snapshot()`` saves it and ``restore()`` rebuilds it.

The native core is the C extension ``bucketly._speedups``, built when bucketly is installed
where a C compiler is available. Without it, or with the environment variable
``BUCKETLY_NO_SPEEDUPS=1``, ``UniqueIndex`` is ``PyUniqueIndex``: the same class in pure Python,
at the speed of a dict of sets (decoding + ``add_events``: 1.2M events/s against 3.5M native on
the unique-clicks workload). ``speedups_available()`` tells which one is in use.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from .protocol.messages import register_encoder

__all__ = [
    "UNIQUE_INDEX_TYPES",
    "MissingFieldError",
    "PyUniqueIndex",
    "UniqueIndex",
    "speedups_available",
]

try:
    from . import _speedups
except ImportError:  # not compiled here: the pure-Python class below does the same job
    _speedups = None  # type: ignore[assignment]


if _speedups is not None:
    MissingFieldError: type[KeyError] = _speedups.MissingFieldError
else:

    class MissingFieldError(KeyError):  # type: ignore[no-redef]
        """An event lacks the key or value field (a ``KeyError`` whose str() is the message)."""

        __str__ = BaseException.__str__


_MISSING = object()

# array typecode of a 4-byte unsigned int (the uint32 of export()'s pairs).
_U32 = next(code for code in "IL" if array(code).itemsize == 4)


def _check_export(keys: Any, values: Any, pairs: Any) -> tuple[tuple[int, ...], ...]:
    """Check ``from_export()``'s arguments (the same checks, in the same order and with the
    same messages, as the native class); return each key's value indexes."""
    for name, arg in (("keys", keys), ("values", values)):
        if not isinstance(arg, list):
            raise TypeError(f"from_export(): {name} must be a list, not {type(arg).__name__}")
    data = bytes(memoryview(pairs))  # TypeError unless bytes-like; a private copy
    end, nv = len(data), len(values)
    pos = 0
    out = []
    for i in range(len(keys)):
        if end - pos < 4:
            raise ValueError(f"pairs is truncated: no count for key {i} at byte {pos} of {end}")
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n > (end - pos) // 4:
            raise ValueError(
                f"pairs: the count of key {i} ({n}) goes past the end ({end - pos} bytes left)"
            )
        indexes = struct.unpack_from(f"<{n}I", data, pos)
        pos += 4 * n
        if n and max(indexes) >= nv:
            bad = next(x for x in indexes if x >= nv)
            raise ValueError(f"pairs: value index {bad} of key {i} is out of range ({nv} values)")
        out.append(indexes)
    if pos != end:
        raise ValueError(
            f"pairs has {end - pos} trailing bytes after the entries of its {len(keys)} keys"
        )
    for obj in keys:
        hash(obj)
    for obj in values:
        hash(obj)
    return tuple(out)


def _missing(index: int, field: Any) -> KeyError:
    shown = f'"{field}"' if isinstance(field, str) else repr(field)
    return MissingFieldError(f"event {index} has no {shown} field")


class _Common:
    """What both implementations share, written once in Python. It comes after the native
    class in ``NativeUniqueIndex``'s bases: nothing here may shadow a native method."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by each implementation

        def add(self, key: Any, value: Any) -> bool: ...
        def items(self) -> dict[Any, list[Any]]: ...
        def key_count(self) -> int: ...
        def __len__(self) -> int: ...

    def update(self, items: Mapping[Any, Iterable[Any]]) -> int:
        """Add every pair of ``{key: [values]}`` (what ``items()`` returns); how many were new."""
        try:
            pairs = items.items()
        except AttributeError:
            raise TypeError(
                "update() argument must be a mapping with an items() method, not "
                f"{type(items).__name__}"
            ) from None
        add = self.add
        return sum(add(key, value) for key, values in pairs for value in values)

    def copy(self) -> Any:
        """An independent copy."""
        new = type(self)()
        new.update(self.items())
        return new

    def __copy__(self) -> Any:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # Keys and values are hashable, so treated as immutable: shared, as copy() shares them.
        return self.copy()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self)} pairs, {self.key_count()} keys>"


class PyUniqueIndex(_Common):
    """The pure-Python ``UniqueIndex``: the same methods and answers as the native one."""

    __slots__ = ("_canonical", "_pairs", "_sets")

    def __init__(self) -> None:
        self._sets: dict[Any, set[Any]] = {}
        # One object per distinct value, shared by every key's set: a value seen under many keys
        # costs a set slot each, not a new object each.
        self._canonical: dict[Any, Any] = {}
        self._pairs = 0

    def add_events(self, events: list[Any], key_field: Any, value_field: Any) -> int:
        """Add the pair ``(event[key_field], event[value_field])`` of each event, in order.

        Returns how many pairs were new. Raises ``TypeError`` for an event that is not a map or
        a key or value that is not hashable, ``MissingFieldError`` (a ``KeyError``) for a
        missing field; the events before the bad one stay added, and the exception's
        ``applied`` attribute says how many.
        """
        sets = self._sets
        canonical = self._canonical.setdefault
        get = dict.get
        added = 0
        index = 0
        try:
            if not isinstance(events, list):
                raise TypeError(f"events must be a list, not {type(events).__name__}")
            for index, event in enumerate(events):
                if not isinstance(event, dict):
                    name = type(event).__name__
                    article = "an" if name[:1] in "aeiouAEIOU" else "a"
                    raise TypeError(f"event {index} is {article} {name}, not a map")
                # dict.get, not event[...]: a dict subclass's __missing__ is not consulted.
                key = get(event, key_field, _MISSING)
                if key is _MISSING:
                    raise _missing(index, key_field)
                value = get(event, value_field, _MISSING)
                if value is _MISSING:
                    raise _missing(index, value_field)
                # Both lookups raise TypeError for an unhashable key or value before anything
                # changes: a bad event leaves no trace.
                seen = sets.get(key)
                value = canonical(value, value)
                if seen is None:
                    seen = sets[key] = set()
                before = len(seen)
                seen.add(value)
                added += len(seen) - before
        except Exception as exc:
            exc.applied = index  # type: ignore[attr-defined]
            raise
        finally:
            self._pairs += added
        return added

    def add(self, key: Any, value: Any) -> bool:
        """Add one pair; ``True`` if it was new."""
        seen = self._sets.get(key)
        value = self._canonical.setdefault(value, value)
        if seen is None:
            seen = self._sets[key] = set()
        if value in seen:
            return False
        seen.add(value)
        self._pairs += 1
        return True

    def contains(self, key: Any, value: Any) -> bool:
        """Whether the pair ``(key, value)`` was added."""
        hash(value)
        return value in self._sets.get(key, ())

    def count(self, key: Any) -> int:
        """How many distinct values ``key`` has (0 for a key never seen)."""
        return len(self._sets.get(key, ()))

    def key_count(self) -> int:
        """How many distinct keys have at least one value."""
        return len(self._sets)

    def counts(self) -> dict[Any, int]:
        """``{key: number of distinct values}`` for every key."""
        return {key: len(seen) for key, seen in self._sets.items()}

    def values(self, key: Any) -> list[Any]:
        """The distinct values of ``key``, in no particular order."""
        return list(self._sets.get(key, ()))

    def items(self) -> dict[Any, list[Any]]:
        """``{key: [distinct values]}``: the whole index."""
        return {key: list(seen) for key, seen in self._sets.items()}

    def clear(self) -> None:
        """Forget every pair."""
        self._sets.clear()
        self._canonical.clear()
        self._pairs = 0

    def copy(self) -> PyUniqueIndex:
        new = type(self)()
        new._sets = {key: set(seen) for key, seen in self._sets.items()}
        new._canonical = dict(self._canonical)
        new._pairs = self._pairs
        return new

    def __len__(self) -> int:
        """How many distinct pairs."""
        return self._pairs

    def export(self) -> tuple[list[Any], list[Any], bytes]:
        """A compact form of the whole index: ``(keys, values, pairs)``.

        ``keys`` are the keys (those with a value), ``values`` the distinct values (each object
        once), ``pairs`` bytes holding, for each key in order, a little-endian uint32 count
        ``n`` then ``n`` little-endian uint32 indexes into ``values``. ``from_export()``
        rebuilds the index; ``items()`` repeats a value once per key, this does not.
        """
        keys = list(self._sets)
        values = list(self._canonical)
        position = {value: i for i, value in enumerate(values)}.__getitem__
        words = array(_U32)
        for seen in self._sets.values():
            words.append(len(seen))
            words.extend(map(position, seen))
        if sys.byteorder != "little":
            words.byteswap()
        return keys, values, words.tobytes()

    @classmethod
    def from_export(cls, keys: list[Any], values: list[Any], pairs: Any) -> Any:
        """A new index of this class holding what ``export()`` described: the same as
        ``cls()`` then ``add(key, value)`` for each pair in order (equal keys or values are
        merged, the first object kept).

        The data is checked first (it may come from a file): ``TypeError`` unless ``keys`` and
        ``values`` are lists of hashable objects and ``pairs`` is bytes-like, ``ValueError``
        unless every count and index is in range and ``pairs`` has no byte left over.
        """
        indexes = _check_export(keys, values, pairs)
        new = cls()
        add = new.add
        for key, key_indexes in zip(keys, indexes, strict=True):
            for i in key_indexes:
                add(key, values[i])
        return new


if _speedups is not None:

    class NativeUniqueIndex(_speedups.UniqueIndex, _Common):
        """``UniqueIndex`` with its native core (``bucketly._speedups``)."""

        __slots__ = ()

    _NATIVE: type[_Common] | None = NativeUniqueIndex
else:
    _NATIVE = None

#: Both implementations, for ``isinstance`` checks (snapshots, dumps).
UNIQUE_INDEX_TYPES: tuple[type[_Common], ...] = (PyUniqueIndex,) if _NATIVE is None else (
    PyUniqueIndex, _NATIVE)

#: The class handlers use: the native one when it is built (and ``BUCKETLY_NO_SPEEDUPS`` is not
#: set), else ``PyUniqueIndex``. Both have the same methods and give the same answers.
UniqueIndex: type[PyUniqueIndex] = (
    PyUniqueIndex
    if _NATIVE is None or os.environ.get("BUCKETLY_NO_SPEEDUPS")
    else cast("type[PyUniqueIndex]", _NATIVE)  # not a subclass, but the same interface
)


# Sent as a dict of sets would be, {key: [values]}, in views and dumps: the wire codec knows
# nothing of handler data types, they register how they are sent.
register_encoder(UNIQUE_INDEX_TYPES, lambda index: index.items())


def speedups_available() -> bool:
    """Whether ``UniqueIndex`` is the native implementation (the C extension is built and
    ``BUCKETLY_NO_SPEEDUPS`` is not set)."""
    return UniqueIndex is not PyUniqueIndex
