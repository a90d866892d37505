"""Fault injection for the durability tests: exit at a named point of a commit or a snapshot.

``BUCKETLY_FAULT=point[,point...]`` makes the process exit at once with status
``FAULT_EXIT_STATUS`` when it reaches a named point; ``point@N`` at its N-th visit. Unset (as in
production) nothing is armed and a point costs one set lookup.
"""

from __future__ import annotations

import logging
import os

from ..errors import ConfigError

__all__ = ["FAULT_ENV", "FAULT_EXIT_STATUS", "FAULT_POINTS", "Faults"]

log = logging.getLogger("bucketly.durability")

#: The environment variable that arms fault-injection points (tests only).
FAULT_ENV = "BUCKETLY_FAULT"
#: Exit status of a process stopped by a fault-injection point, so a test can tell it apart.
FAULT_EXIT_STATUS = 86
#: Every fault-injection point, in the order a record or a snapshot reaches them.
FAULT_POINTS = frozenset(
    {
        "commit.before_commit",  # journal records inserted, transaction not committed
        "commit.after_commit",  # committed (fsynced), not applied nor acknowledged
        "snapshot.after_write",  # snapshot row written, journal not compacted, not committed
        "snapshot.after_compact",  # journal compacted too, not committed
        "snapshot.after_commit",  # snapshot and compaction committed, not yet noted in memory
        "level_snapshot.before_commit",  # a snapshot-level bucket's row written, not committed
    }
)


class Faults:
    """Fault-injection points armed by ``BUCKETLY_FAULT`` (tests only; see the module doc)."""

    def __init__(self, spec: str | None = None) -> None:
        if spec is None:
            spec = os.environ.get(FAULT_ENV, "")
        self.armed: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, count = item.partition("@")
            if point not in FAULT_POINTS:
                raise ConfigError(
                    f"{FAULT_ENV}: unknown fault point {point!r}; points: "
                    f"{', '.join(sorted(FAULT_POINTS))}"
                )
            self.armed[point] = int(count or 1)
        if self.armed:
            log.warning("fault injection armed (tests only): %s", spec)

    def __call__(self, point: str) -> None:
        if point in self.armed:
            self.armed[point] -= 1
            if self.armed[point] <= 0:
                log.warning("fault injection: exiting at %s", point)
                logging.shutdown()
                os._exit(FAULT_EXIT_STATUS)
