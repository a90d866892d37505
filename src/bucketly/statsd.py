"""``StatsdMetrics``: the built-in handler of the statsd listener's buckets (docs/statsd.md).

It aggregates ``bucketly.protocol.statsd.Metric`` records as statsd does, per flush interval:

- counters (``c``): the sum of ``value / rate`` (a sample rate of 0.1 counts each line ten
  times) and that sum per second of the interval;
- gauges (``g``): the last value set, changed by deltas (``+3|g``, ``-3|g``); kept across
  intervals, like statsd's;
- timers (``ms``), histograms (``h``) and distributions (``d``): count (scaled by the sample
  rate, like statsd's), count per second, sum, sum of squares, mean, standard deviation, lower,
  upper, exact; the median and the configured percentiles exact (statsd's formulas) up to
  ``EXACT_SAMPLES`` samples in an interval, and beyond that from a DDSketch, whose every
  quantile is within ``RELATIVE_ACCURACY`` (1%) of the true value, in memory bounded by the
  values' range, not their number;
- sets (``s``): the exact number of distinct members.

A metric sent with DogStatsD tags is its own series: its key is ``name;tag1;tag2`` (tags sorted).

``statsd_flush(now)`` closes the interval: counters, timers and sets start again from nothing
(as statsd's do with ``deleteIdleStats``), gauges go on. The closed interval is kept as ``last``
and handed to the backends (the server's Graphite backend, ``graphite_lines``); views answer the
current interval or the last flushed one. Closing swaps dictionaries and copies the gauges, so
it does not hold up ingestion; summarising (percentiles) happens when asked, on data that no
longer changes.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch

from .handlers import Handler, view

__all__ = [
    "DEFAULT_PERCENTILES",
    "EXACT_SAMPLES",
    "RELATIVE_ACCURACY",
    "Interval",
    "StatsdMetrics",
    "graphite_lines",
    "series_key",
]

#: statsd's ``percentThreshold`` default: ``upper_90``.
DEFAULT_PERCENTILES = (90.0,)
#: DDSketch's guarantee: a reported quantile q' of true quantile q has |q' - q| <= 1% of q.
#: 1% keeps a sketch of values from 1 ms to 1 hour under ~800 buckets; statsd itself keeps
#: every sample (exact, unbounded memory).
RELATIVE_ACCURACY = 0.01
#: Samples of one timer in one interval kept as they are, for exact percentiles computed as
#: statsd does (most timers see fewer in 10 s); past it they go into a DDSketch (8 bytes a
#: sample at most, then bounded: about 800 buckets for values from 1 ms to 1 hour).
EXACT_SAMPLES = 1000


def series_key(name: str, tags: Iterable[str] = ()) -> str:
    """The key a metric is kept under: its name, then its tags sorted, ``;`` between."""
    tags = sorted(tags)
    return name if not tags else name + ";" + ";".join(tags)


class _Timer:
    """One timer's interval: exact sums and bounds; its samples while there are at most
    ``EXACT_SAMPLES`` (quantiles then exactly as statsd computes them), a DDSketch beyond."""

    __slots__ = ("count", "lower", "samples", "sketch", "sum", "sum_squares", "upper", "values")

    def __init__(self) -> None:
        self.count = 0.0  # samples scaled by 1 / rate
        self.samples = 0
        self.sum = 0.0
        self.sum_squares = 0.0
        self.lower = math.inf
        self.upper = -math.inf
        self.values: list[float] | None = []
        self.sketch: DDSketch | None = None

    def add(self, value: float, rate: float) -> None:
        self.count += 1.0 / rate
        self.samples += 1
        self.sum += value
        self.sum_squares += value * value
        if value < self.lower:
            self.lower = value
        if value > self.upper:
            self.upper = value
        values = self.values
        if values is not None:
            values.append(value)
            if len(values) > EXACT_SAMPLES:
                self.sketch = DDSketch(RELATIVE_ACCURACY)
                for kept in values:
                    self.sketch.add(kept)
                self.values = None
        else:
            assert self.sketch is not None
            self.sketch.add(value)

    @property
    def exact(self) -> bool:
        return self.values is not None

    _NUMBERS = ("count", "samples", "sum", "sum_squares", "lower", "upper")

    def to_state(self) -> dict[str, Any]:
        """Plain data (for snapshot(): a reload, a durable snapshot)."""
        state: dict[str, Any] = {name: getattr(self, name) for name in self._NUMBERS}
        state["values"] = None if self.values is None else list(self.values)
        state["sketch"] = None if self.sketch is None else _sketch_state(self.sketch)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Timer:
        timer = cls()
        for name in cls._NUMBERS:
            setattr(timer, name, state[name])
        timer.values = None if state["values"] is None else list(state["values"])
        timer.sketch = None if state["sketch"] is None else _sketch_from(state["sketch"])
        return timer

    def summary(self, seconds: float, percentiles: Iterable[float]) -> dict[str, float]:
        mean = self.sum / self.samples
        variance = max(self.sum_squares / self.samples - mean * mean, 0.0)
        ordered = sorted(self.values) if self.values is not None else None
        out = {
            "count": self.count,
            "count_ps": self.count / seconds if seconds > 0 else 0.0,
            "samples": float(self.samples),
            "sum": self.sum,
            "sum_squares": self.sum_squares,
            "mean": mean,
            "std": math.sqrt(variance),
            "lower": self.lower,
            "upper": self.upper,
            "median": self._median(ordered),
        }
        for pct in percentiles:
            out["upper_" + percentile_name(pct)] = self._upper(ordered, pct)
        return out

    def _median(self, ordered: list[float] | None) -> float:
        if ordered is None:
            return self._quantile(0.5)
        mid = len(ordered) // 2  # statsd's: the middle one, or the mean of the middle two
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def _upper(self, ordered: list[float] | None, pct: float) -> float:
        if ordered is None:
            return self._quantile(pct / 100.0)
        # statsd's upper_<pct>: the largest of the lowest round(pct% of n) values.
        keep = max(math.floor(pct / 100.0 * len(ordered) + 0.5), 1)
        return ordered[keep - 1]

    def _quantile(self, q: float) -> float:
        assert self.sketch is not None
        value = self.sketch.get_quantile_value(q)
        # The sketch's estimate, kept within what was actually seen.
        return min(max(float(value if value is not None else 0.0), self.lower), self.upper)


# DDSketch has no plain-data export but protobuf (an extra dependency): its two bin stores and
# totals are copied as they are, and put back into a new sketch of the same accuracy.
_SKETCH_TOTALS = ("_zero_count", "_count", "_min", "_max", "_sum")


def _sketch_state(sketch: DDSketch) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(sketch, name) for name in _SKETCH_TOTALS}
    for name in ("_store", "_negative_store"):
        store = vars(getattr(sketch, name))
        # An empty store's min_key/max_key are infinity objects: the defaults of a new store,
        # so they are left out, and the new sketch's own are kept.
        state[name] = {key: list(value) if key == "bins" else value
                       for key, value in store.items() if type(value) in (int, float, list)}
    return state


def _sketch_from(state: dict[str, Any]) -> DDSketch:
    sketch = DDSketch(RELATIVE_ACCURACY)
    for name in _SKETCH_TOTALS:
        setattr(sketch, name, state[name])
    for name in ("_store", "_negative_store"):
        store = getattr(sketch, name)
        for key, value in state[name].items():
            setattr(store, key, list(value) if key == "bins" else value)
    return sketch


def percentile_name(pct: float) -> str:
    """statsd's suffix for a percentile: 90 -> ``90``, 99.9 -> ``99_9``."""
    text = f"{pct:g}"
    return text.replace(".", "_")


@dataclass
class Interval:
    """One flush interval's aggregates. After ``statsd_flush`` nothing changes them."""

    start: float
    end: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    timers: dict[str, _Timer] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    #: The interval's length as statsd counts it (its flushInterval), for the rates; None: the
    #: time from start to end.
    nominal: float | None = None

    @property
    def seconds(self) -> float:
        if self.nominal is not None:
            return self.nominal
        return max(self.end - self.start, 0.0)

    def counter(self, key: str) -> dict[str, float] | None:
        if key not in self.counters:
            return None
        count = self.counters[key]
        seconds = self.seconds
        return {"count": count, "rate": count / seconds if seconds > 0 else 0.0}

    def timer(self, key: str, percentiles: Iterable[float]) -> dict[str, float] | None:
        timer = self.timers.get(key)
        return None if timer is None else timer.summary(self.seconds, percentiles)

    def set_count(self, key: str) -> dict[str, int] | None:
        members = self.sets.get(key)
        return None if members is None else {"count": len(members)}

    def to_state(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "counters": dict(self.counters),
                "gauges": dict(self.gauges),
                "timers": {key: timer.to_state() for key, timer in self.timers.items()},
                "sets": {key: set(members) for key, members in self.sets.items()},
                "nominal": self.nominal}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Interval:
        return cls(state["start"], state["end"], dict(state["counters"]), dict(state["gauges"]),
                   {key: _Timer.from_state(t) for key, t in state["timers"].items()},
                   {key: set(members) for key, members in state["sets"].items()},
                   state["nominal"])

    def summary(self, percentiles: Iterable[float]) -> dict[str, Any]:
        percentiles = tuple(percentiles)
        return {
            "start": self.start,
            "end": self.end,
            "seconds": self.seconds,
            "counters": {key: self.counter(key) for key in sorted(self.counters)},
            "gauges": dict(sorted(self.gauges.items())),
            "timers": {key: self.timer(key, percentiles) for key in sorted(self.timers)},
            "sets": {key: self.set_count(key) for key in sorted(self.sets)},
        }


class StatsdMetrics(Handler):
    """statsd's aggregation: counters, gauges, timers/histograms/distributions, sets.

    Config ``{"percentiles": [90, 99]}`` (default ``[90]``); bucketlyd's
    ``--statsd-percentiles`` sets it for every statsd bucket it writes to.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.percentiles = tuple(float(p) for p in config.get("percentiles", DEFAULT_PERCENTILES))
        for pct in self.percentiles:
            if not 0.0 < pct < 100.0:
                raise ValueError(f"a percentile must be between 0 and 100, not {pct:g}")
        self.started = time.time()
        self.counters: dict[str, float] = {}
        self.gauges: dict[str, float] = {}
        self.timers: dict[str, _Timer] = {}
        self.sets: dict[str, set[str]] = {}
        self.last: Interval | None = None
        self.flushes = 0

    def on_events(self, events: list[Any]) -> None:
        counters, gauges, timers, sets = self.counters, self.gauges, self.timers, self.sets
        for name, kind, value, rate, tags in events:
            key = name if not tags else name + ";" + ";".join(tags)
            if kind == "c":
                counters[key] = counters.get(key, 0.0) + value / rate
            elif kind == "g":
                gauges[key] = value
            elif kind == "gd":
                gauges[key] = gauges.get(key, 0.0) + value
            elif kind == "s":
                members = sets.get(key)
                if members is None:
                    members = sets[key] = set()
                members.add(value)
            else:
                timer = timers.get(key)
                if timer is None:
                    timer = timers[key] = _Timer()
                timer.add(value, rate)

    def on_event(self, event: Any) -> None:
        self.on_events([event])

    def statsd_flush(self, now: float, seconds: float | None = None) -> Interval:
        """Close the current interval at ``now`` and return it (it becomes ``last``).

        ``seconds``: its length for the per-second rates (statsd divides by its
        flushInterval, whatever the timer's jitter); by default, the time since it began."""
        closed = Interval(self.started, now, self.counters, dict(self.gauges), self.timers,
                          self.sets, seconds)
        self.counters, self.timers, self.sets = {}, {}, {}
        self.started = now
        self.last = closed
        self.flushes += 1
        return closed

    def _interval(self, interval: str) -> Interval | None:
        if interval == "current":
            return Interval(self.started, time.time(), self.counters, self.gauges, self.timers,
                            self.sets)
        if interval == "last":
            return self.last
        raise ValueError(f"interval must be 'current' or 'last', not {interval!r}")

    @view
    def counter(self, name: str, tags: list[str] | None = None,
                interval: str = "current") -> dict[str, float] | None:
        """``{"count", "rate"}`` of a counter in the current (or ``last``) interval, or None."""
        period = self._interval(interval)
        return None if period is None else period.counter(series_key(name, tags or ()))

    @view
    def gauge(self, name: str, tags: list[str] | None = None,
              interval: str = "current") -> float | None:
        """A gauge's value now (or at the last flush), or None if never set."""
        period = self._interval(interval)
        return None if period is None else period.gauges.get(series_key(name, tags or ()))

    @view
    def timer(self, name: str, tags: list[str] | None = None,
              interval: str = "current") -> dict[str, float] | None:
        """A timer's (histogram's, distribution's) summary, with ``upper_<p>`` percentiles."""
        period = self._interval(interval)
        if period is None:
            return None
        return period.timer(series_key(name, tags or ()), self.percentiles)

    @view
    def set(self, name: str, tags: list[str] | None = None,
            interval: str = "current") -> dict[str, int] | None:
        """``{"count"}``: the distinct members of a set in the interval, or None."""
        period = self._interval(interval)
        return None if period is None else period.set_count(series_key(name, tags or ()))

    @view
    def metrics(self, interval: str = "current") -> dict[str, Any] | None:
        """Every metric of the current (or ``last``) interval, summarised, with its bounds."""
        period = self._interval(interval)
        return None if period is None else period.summary(self.percentiles)

    def snapshot(self) -> Any:
        current = Interval(self.started, self.started, self.counters, self.gauges, self.timers,
                           self.sets).to_state()
        return {"percentiles": list(self.percentiles), "current": current,
                "last": None if self.last is None else self.last.to_state(),
                "flushes": self.flushes}

    def restore(self, state: Any) -> None:
        self.percentiles = tuple(state["percentiles"])
        current = Interval.from_state(state["current"])
        self.started = current.start
        self.counters, self.gauges = current.counters, current.gauges
        self.timers, self.sets = current.timers, current.sets
        self.last = None if state["last"] is None else Interval.from_state(state["last"])
        self.flushes = state["flushes"]

    def dump(self) -> Any:
        return {
            "current": self._interval("current").summary(self.percentiles),  # type: ignore[union-attr]
            "last": None if self.last is None else self.last.summary(self.percentiles),
            "flushes": self.flushes,
        }


_SPACES = re.compile(r"\s+")
_NOT_GRAPHITE = re.compile(r"[^a-zA-Z_\-0-9.]")


def graphite_name(name: str) -> str:
    """statsd's own clean-up of a key: whitespace to ``_``, ``/`` to ``-``, other characters
    outside ``[a-zA-Z0-9_.-]`` removed."""
    return _NOT_GRAPHITE.sub("", _SPACES.sub("_", name).replace("/", "-"))


def _graphite_series(key: str, suffix: str) -> str:
    name, _, tags = key.partition(";")
    path = graphite_name(name) + suffix
    if not tags:
        return path
    # Graphite's tag syntax: name;tag=value. A DogStatsD tag without a value gets "true".
    rendered = []
    for tag in tags.split(";"):
        tag_name, sep, value = tag.partition(":")
        rendered.append(f"{graphite_name(tag_name)}={graphite_name(value) if sep else 'true'}")
    return path + ";" + ";".join(rendered)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def graphite_lines(interval: Interval, percentiles: Iterable[float],
                   prefix: str = "stats") -> list[str]:
    """The Graphite plaintext lines (``path value timestamp``) of one flushed interval, with
    the names statsd's graphite backend writes (``legacyNamespace: false``); docs/statsd.md."""
    stamp = int(interval.end)
    lines: list[str] = []

    def put(kind: str, key: str, suffix: str, value: float) -> None:
        lines.append(f"{prefix}.{kind}.{_graphite_series(key, suffix)} {_number(value)} {stamp}")

    for key in sorted(interval.counters):
        got = interval.counter(key)
        assert got is not None
        put("counters", key, ".rate", got["rate"])
        put("counters", key, ".count", got["count"])
    percentiles = tuple(percentiles)
    for key in sorted(interval.timers):
        summary = interval.timer(key, percentiles)
        assert summary is not None
        for stat, value in summary.items():
            if stat != "samples":
                put("timers", key, "." + stat, value)
    for key in sorted(interval.gauges):
        put("gauges", key, "", interval.gauges[key])
    for key in sorted(interval.sets):
        put("sets", key, ".count", len(interval.sets[key]))
    return lines
