"""A short kill -9 soak (bench/kill9_soak.py, whose 1,000-cycle run is in docs/durability.md).

Eight producers send to a durable bucket through ``bucketly.Client`` while the daemon is killed
with SIGKILL and restarted, again and again, once in a while also during its start-up: every
event a flush acknowledged must be in the bucket exactly once, and nothing else may be.
"""

from __future__ import annotations

from bench.kill9_soak import run_soak


def test_kill9_cycles_lose_nothing_acknowledged_and_double_nothing() -> None:
    figures = run_soak(12, seed=20261206)
    assert figures["cycles"] == 12
    assert figures["acknowledged"] > 0 and figures["kills_with_acks"] > 0
    assert figures["lost"] == 0, figures["examples"]
    assert figures["doubled"] == 0, figures["examples"]
    assert figures["unsent"] == 0
    # The kills cut acknowledgements off: resends had to be recognised, or this tested little.
    assert figures["in_doubt"] > 0
