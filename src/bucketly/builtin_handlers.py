"""Handlers that come with bucketly, used when bucketlyd is given no handlers module.

They cover the common cases without writing any code; write your own module for anything else
(docs/handlers.md).
"""

from __future__ import annotations

from typing import Any

from .handlers import Handler, view
from .statsd import StatsdMetrics
from .unique import UniqueIndex

__all__ = ["Count", "StatsdMetrics", "UniqueCount"]


class Count(Handler):
    """Count events, in total and by the value of one field (config ``{"key": "field"}``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.key = config.get("key")
        self.total = 0
        self.counts: dict[Any, int] = {}

    def on_events(self, events: list[Any]) -> None:
        self.total += len(events)
        key = self.key
        if key is None:
            return
        counts = self.counts
        for event in events:
            value = event.get(key) if isinstance(event, dict) else None
            counts[value] = counts.get(value, 0) + 1

    @view
    def count(self, value: Any = None) -> int:
        """The number of events; with ``value``, of events whose key field had that value."""
        if value is None:
            return self.total
        return self.counts.get(value, 0)

    @view
    def top(self, n: int = 10) -> list[list[Any]]:
        """The ``n`` most frequent values of the key field, with their counts."""
        ranked = sorted(self.counts.items(), key=lambda item: item[1], reverse=True)
        return [[value, count] for value, count in ranked[:n]]

    def dump(self) -> Any:
        return {"total": self.total, "counts": self.counts}


class UniqueCount(Handler):
    """Count distinct values of one field per value of another.

    Config ``{"key": "url", "value": "user"}``: how many distinct users per URL (fields may
    also be integers, positions in events that are arrays). The pairs are kept in a
    ``bucketly.UniqueIndex`` (native core).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.key = config.get("key", "key")
        self.value = config.get("value", "value")
        self.seen = UniqueIndex()

    def on_events(self, events: list[Any]) -> None:
        if type(self.key) is str and type(self.value) is str:
            self.seen.add_events(events, self.key, self.value)  # maps: the whole batch in C
            return
        # Other fields (integers: positions in array events) are read as event[field].
        add, key, value = self.seen.add, self.key, self.value
        for event in events:
            add(event[key], event[value])

    @view
    def count(self, key: Any) -> int:
        """How many distinct values were seen for ``key``."""
        return self.seen.count(key)

    @view
    def top(self, n: int = 10) -> list[list[Any]]:
        """The ``n`` keys with the most distinct values, with their counts."""
        ranked = sorted(self.seen.counts().items(), key=lambda item: item[1], reverse=True)
        return [[k, count] for k, count in ranked[:n]]

    def dump(self) -> Any:
        return {k: sorted(values, key=repr) for k, values in self.seen.items().items()}

    def restore(self, state: Any) -> None:
        super().restore(state)
        if isinstance(self.seen, dict):  # a snapshot of 0.1.0, which kept a dict of sets
            index = UniqueIndex()
            index.update(self.seen)
            self.seen = index
