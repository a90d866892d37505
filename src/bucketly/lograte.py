"""``LogLimiter``: log a failure that repeats at once, then at most once per interval.

A full disk fails every durable commit, a broken handler raises on every event, a database that
is down fails every run of a job. Each occurrence is counted (``stats``, ``bucket_info``) and
reported to whoever caused it; the log needs the news, not every repetition.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["REPEAT_LOG_INTERVAL", "LogLimiter"]

#: Seconds between two log lines about a failure that keeps repeating.
REPEAT_LOG_INTERVAL = 60.0


class LogLimiter:
    """``ready()`` is true the first time, then again once ``interval`` seconds have passed."""

    __slots__ = ("_clock", "_last", "interval")

    def __init__(
        self, interval: float = REPEAT_LOG_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval = interval
        self._clock = clock
        self._last: float | None = None

    def ready(self, *, anew: bool = False) -> bool:
        """Whether to log now (``anew``: a new series of failures began, log it in any case)."""
        now = self._clock()
        if anew or self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False
