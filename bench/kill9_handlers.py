"""The handlers module of the kill -9 soak: ``bucketlyd --bucket-handlers bench/kill9_handlers.py``.

``EventTally`` counts how many times it was given each (producer, event id), so an event applied
twice is as visible as one that is missing.
"""

from __future__ import annotations

from typing import Any

from bucketly.handlers import Handler, view

#: Most event ids a view lists by name; the counts are always exact.
LISTED = 1000


class EventTally(Handler):
    """Events are ``[producer, id]`` pairs; ids of one producer are 0, 1, 2, ...

    One byte per id and producer (a count, saturating at 255): a soak of millions of events
    keeps a few megabytes of state, and a snapshot is a copy of those bytes.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config)
        self.counts: dict[str, bytearray] = {}

    def on_events(self, events: list[Any]) -> None:
        counts = self.counts
        for producer, n in events:
            tally = counts.get(producer)
            if tally is None:
                tally = counts[producer] = bytearray()
            if n >= len(tally):
                tally.extend(bytes(n + 1 - len(tally)))
            if tally[n] < 255:
                tally[n] += 1

    def snapshot(self) -> Any:
        return {producer: bytes(tally) for producer, tally in self.counts.items()}

    def restore(self, state: Any) -> None:
        self.counts = {producer: bytearray(tally) for producer, tally in state.items()}

    @view
    def heads(self) -> dict[str, int]:
        """Per producer, one more than the highest id applied."""
        return {producer: len(tally) for producer, tally in self.counts.items()}

    @view
    def tally(self, producer: str, below: int) -> dict[str, Any]:
        """What was applied of ``producer``'s ids: those below ``below`` never applied
        (``missing``), those applied more than once (``doubled``), those at or above ``below``
        (``beyond``): counts, and up to ``LISTED`` ids of each."""
        tally = self.counts.get(producer, bytearray())
        head = tally[:below]
        missing, start = [], 0
        if len(head) < below:
            head = head + bytes(below - len(head))
        missing_count = head.count(0)
        while len(missing) < LISTED and (found := head.find(0, start)) >= 0:
            missing.append(found)
            start = found + 1
        once = tally.translate(_ONCE)  # 1 where an id was applied twice or more
        doubled, start = [], 0
        while len(doubled) < LISTED and (found := once.find(1, start)) >= 0:
            doubled.append(found)
            start = found + 1
        beyond = tally[below:]
        return {
            "missing_count": missing_count,
            "missing": missing,
            "doubled_count": once.count(1),
            "doubled": doubled,
            "beyond_count": len(beyond) - beyond.count(0),
        }


_ONCE = bytes([0, 0] + [1] * 254)
