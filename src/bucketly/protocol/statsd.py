"""The statsd line protocol, sans I/O: bytes in, ``Metric`` records out, rejects counted.

One line is ``name:value|type[|@rate][|#tag:v,tag2]``; a datagram or a TCP stream carries several,
one per line. Accepted: statsd's types ``c`` (counter), ``g`` (gauge; a value written with a sign,
``+3`` or ``-3``, changes it instead of setting it), ``ms`` (timer), ``h`` (histogram), ``s`` (set),
and DogStatsD's ``d`` (distribution), its tags and its multi-value packing
(``name:1:2:3|ms``: three samples). DogStatsD's container id (``|c:...``), timestamp
(``|T...``), external data (``|e:...``) and cardinality (``|card:...``) fields are accepted and
ignored.

Nothing is dropped silently: a line that is not of this form is counted in ``rejects`` by one
of ``REJECT_REASONS`` and the rest of its datagram is still taken. Empty lines (a trailing
newline) are not lines. ``parse`` does the work for a datagram; ``LineBuffer`` cuts a TCP stream
into lines, and gives the last one even when it has no newline (statsd loses it: its "newline
trap").
"""

from __future__ import annotations

import collections
import math
from typing import NamedTuple

__all__ = [
    "KINDS",
    "MAX_LINE",
    "REJECT_REASONS",
    "LineBuffer",
    "Metric",
    "StatsdParser",
    "parse",
    "parse_line",
]

#: Longest line taken from a TCP stream, in bytes. A UDP datagram is at most 64 KiB anyway, and
#: statsd clients keep theirs under a network MTU (512-1,432 bytes); a stream with no newline in
#: this many bytes is not statsd, and buffering it without bound would let it take memory.
MAX_LINE = 64 * 1024

#: Metric names the parser remembers decoded (then it starts again): a bound on what a sender
#: of ever-new names can make it hold.
MAX_NAMES = 100_000

#: The ``kind`` of a ``Metric``: the statsd type, with ``gd`` for a gauge delta (``+3|g``).
KINDS = ("c", "g", "gd", "ms", "h", "d", "s")

#: Why a line was not taken (the ``rejects`` counter's keys, and the Prometheus label values).
REJECT_REASONS = (
    "bad_sample_rate",  # @rate not a number in (0, 1]
    "bad_field",  # a |field after the type that is none of @rate, #tags, c:, T, e:, card:
    "bad_type",  # a type that is none of KINDS
    "bad_value",  # not a finite number (for a set: empty)
    "empty_name",
    "line_too_long",  # TCP: no newline within MAX_LINE bytes
    "no_value",  # no ':' or no '|type'
    "not_utf8",
    "unsupported",  # DogStatsD events (_e{) and service checks (_sc|)
)

_IGNORED_FIELDS = (b"c:", b"T", b"e:", b"card:")
_TYPES = {b"c": "c", b"g": "g", b"ms": "ms", b"h": "h", b"d": "d", b"s": "s"}


class Metric(NamedTuple):
    """One sample, as the statsd buckets' handlers receive it (``on_events``).

    ``value`` is a float (for a set: the member, a str). ``rate`` is the sample rate the client
    sent it at (1.0 unless ``@rate`` was given): one counter increment at rate 0.1 stands for
    ten. ``tags`` are DogStatsD's, sorted, as sent (``"env:prod"``).
    """

    name: str
    kind: str
    value: float | str
    rate: float = 1.0
    tags: tuple[str, ...] = ()


_new = tuple.__new__  # builds a Metric without NamedTuple's Python-level __new__


class StatsdParser:
    """Parses datagrams (or lines cut from a stream) into ``Metric`` records.

    ``parse(data)`` returns the metrics of ``data``, in order; lines that are not statsd are
    counted in ``rejects`` by reason and skipped. The common line (``name:value|type``, one
    value, perhaps a sample rate and tags) takes a fast path that remembers the names and the
    rate-and-tags fields it decoded (at most ``MAX_NAMES`` of each); any other line is parsed by
    ``parse_line``, with the same result.
    """

    def __init__(self, rejects: collections.Counter[str] | None = None) -> None:
        self.rejects: collections.Counter[str] = (
            rejects if rejects is not None else collections.Counter()
        )
        self._names: dict[bytes, str] = {}
        self._extras: dict[bytes, tuple[float, tuple[str, ...]]] = {}

    def parse(self, data: bytes) -> list[Metric]:
        out: list[Metric] = []
        append = out.append
        names, extras, types, rejects = self._names, self._extras, _TYPES, self.rejects
        for line in data.split(b"\n"):
            if not line:
                continue
            head, _, rest = line.partition(b":")
            values, bar, type_ = rest.partition(b"|")
            kind = types.get(type_)  # None also when more fields follow, or a \r
            rate = 1.0
            tags: tuple[str, ...] = ()
            if kind is None and bar:
                type_, _, extra = type_.partition(b"|")
                kind = types.get(type_)
                if kind is not None:
                    known = extras.get(extra)
                    if known is None:
                        fields = _fields(extra)
                        if isinstance(fields, str):
                            rejects[fields] += 1
                            continue
                        if len(extras) >= MAX_NAMES:
                            extras.clear()
                        known = extras[extra] = fields
                    rate, tags = known
            if kind is None or not bar or not values:
                reason = parse_line(line, out)
                if reason is not None:
                    rejects[reason] += 1
                continue
            name = names.get(head)
            if name is None:
                try:
                    name = head.decode()
                except UnicodeDecodeError:
                    rejects["not_utf8"] += 1
                    continue
                if not name.strip() or name.startswith(("_e{", "_sc")):
                    reason = parse_line(line, out)
                    if reason is not None:
                        rejects[reason] += 1
                    continue
                if len(names) >= MAX_NAMES:
                    names.clear()
                names[head] = name
            if kind == "s":
                try:
                    append(_new(Metric, (name, kind, values.decode(), rate, tags)))
                except UnicodeDecodeError:
                    rejects["not_utf8"] += 1
                continue
            if b":" in values:
                reason = parse_line(line, out)  # DogStatsD's packed values
                if reason is not None:
                    rejects[reason] += 1
                continue
            try:
                value = float(values)
            except ValueError:
                rejects["bad_value"] += 1
                continue
            if value - value != 0.0:  # NaN or infinite
                rejects["bad_value"] += 1
                continue
            if kind == "g" and values[:1] in (b"+", b"-"):
                kind = "gd"
            append(_new(Metric, (name, kind, value, rate, tags)))
        return out


def parse(data: bytes, rejects: collections.Counter[str]) -> list[Metric]:
    """The metrics of one datagram, in order; rejects counted (``StatsdParser.parse``)."""
    return StatsdParser(rejects).parse(data)


def parse_line(line: bytes, out: list[Metric]) -> str | None:
    """Append the metrics of one line to ``out``; return the reject reason if it is not statsd."""
    line = line.rstrip(b"\r")
    if line.startswith((b"_e{", b"_sc|")):
        return "unsupported"
    head, sep, rest = line.partition(b":")
    if not sep:
        return "no_value"
    values, sep, rest = rest.partition(b"|")
    if not sep:
        return "no_value"
    try:
        name = head.decode()
    except UnicodeDecodeError:
        return "not_utf8"
    if not name.strip():
        return "empty_name"
    type_, _, rest = rest.partition(b"|")
    kind = _TYPES.get(type_)
    if kind is None:
        return "bad_type"
    rate = 1.0
    tags: tuple[str, ...] = ()
    if rest:
        fields = _fields(rest)
        if isinstance(fields, str):
            return fields
        rate, tags = fields
    if kind == "s":
        # A set's member is any text; DogStatsD packing is not applied (a member may hold ':').
        try:
            member = values.decode()
        except UnicodeDecodeError:
            return "not_utf8"
        if not member:
            return "bad_value"
        out.append(_new(Metric, (name, kind, member, rate, tags)))
        return None
    parsed: list[Metric] = []
    for text in values.split(b":"):
        try:
            value = float(text)
        except ValueError:
            return "bad_value"
        if not math.isfinite(value):
            return "bad_value"
        if kind == "g" and text[:1] in (b"+", b"-"):
            parsed.append(_new(Metric, (name, "gd", value, rate, tags)))
        else:
            parsed.append(_new(Metric, (name, kind, value, rate, tags)))
    out.extend(parsed)  # all of the line's values, or none of them
    return None


def _fields(rest: bytes) -> tuple[float, tuple[str, ...]] | str:
    """``(rate, tags)`` of the fields after the type, or the reason they are not statsd."""
    rate = 1.0
    tags: tuple[str, ...] = ()
    for field in rest.split(b"|"):
        if field.startswith(b"@"):
            try:
                rate = float(field[1:])
            except ValueError:
                return "bad_sample_rate"
            if not 0.0 < rate <= 1.0:  # also false for NaN
                return "bad_sample_rate"
        elif field.startswith(b"#"):
            try:
                tags = tuple(sorted(t for t in field[1:].decode().split(",") if t))
            except UnicodeDecodeError:
                return "not_utf8"
        elif not field.startswith(_IGNORED_FIELDS):
            return "bad_field"
    return rate, tags


class LineBuffer:
    """Cuts a TCP byte stream into statsd lines.

    ``feed(data)`` returns the complete lines' bytes (ready for ``parse``); ``close()`` returns
    what is left, the last line, when the peer closes without a final newline. A line longer
    than ``MAX_LINE`` is counted as ``line_too_long`` and skipped up to its newline.
    """

    def __init__(self, rejects: collections.Counter[str], max_line: int = MAX_LINE) -> None:
        self.rejects = rejects
        self.max_line = max_line
        self._pending = b""
        self._skipping = False

    def feed(self, data: bytes) -> bytes:
        cut = data.rfind(b"\n")
        if cut < 0:
            if not self._skipping:
                self._pending += data
                if len(self._pending) > self.max_line:
                    self.rejects["line_too_long"] += 1
                    self._pending = b""
                    self._skipping = True
            return b""
        head, self._pending = self._pending + data[: cut + 1], data[cut + 1 :]
        if self._skipping:
            head = head.partition(b"\n")[2]  # the rest of the long line goes too
            self._skipping = False
        if len(self._pending) > self.max_line:
            self.rejects["line_too_long"] += 1
            self._pending = b""
            self._skipping = True
        return head

    def close(self) -> bytes:
        rest, self._pending = self._pending, b""
        return b"" if self._skipping else rest
