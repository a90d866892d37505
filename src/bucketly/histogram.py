"""``Histogram``: a latency or size distribution kept as plain integers, cheap to observe.

What the server measures on its own paths (a view's latency, a durable commit's time, the
event loop's lag) is counted here with one ``bisect`` and two additions, with no lock and no
``prometheus_client`` call: the metrics endpoint turns the counts into a Prometheus histogram
only when it is scraped (server/metrics.py). Everything runs on the event-loop thread, so two
observations never overlap.

The bounds are fixed per histogram (Prometheus's ``le``): ``counts[i]`` is how many values were
at most ``bounds[i]`` and above ``bounds[i - 1]``; the last count is those above every bound.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["BATCH_BOUNDS", "LATENCY_BOUNDS", "LOOP_LAG_BOUNDS", "Histogram"]

#: Seconds, for calls made on the event loop (a view) or waited for from it (a durable commit,
#: mostly its fsync): from 0.1 ms, which a view of a counter takes, to 10 s, beyond which
#: anything is an incident whatever its exact time.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a timer of the event loop fires late: under 1 ms when idle; ``WORK_PER_TURN`` keeps
#: one connection's turn near 1 ms; tens of ms mean a handler or a job blocks the loop.
LOOP_LAG_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
#: Durable sends sharing one commit (group commit): powers of 2 up to what
#: ``pipeline.MAX_PIPELINED_SENDS`` and many connections can put in one.
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Histogram:
    """Counts of observed values by bucket, and their sum. ``observe(value)`` to count one."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"a histogram's bounds must increase: {bounds!r}")
        self.bounds = tuple(bounds)
        #: One more than the bounds: the last is for values above every bound (+Inf).
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, values at most le)`` for each bound and ``+Inf``: Prometheus's buckets."""
        buckets = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else _le(bound), total))
        return buckets


def _le(bound: float) -> str:
    # As prometheus_client writes them: 1.0 for a whole number, so that le values do not change
    # between ints and floats.
    return repr(float(bound))
