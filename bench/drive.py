"""Entry point of driver subprocesses: ``python -m bench.drive KIND '<json options>'``.

A driver measures one run from a fresh interpreter and prints its result as the last line of
stdout (JSON). It exits non-zero, with the reason on stderr, when the run fails, e.g. because the
system's final count differs from the ground truth.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from typing import Any, cast

from bench.harness import print_result

#: kind -> "module:function"; modules are imported only when their driver runs.
DRIVERS = {
    "inprocess": "bench.peers.ceilings:drive_inprocess",
    "bare-feed": "bench.peers.ceilings:drive_bare_feed",
    "bare-ingest": "bench.peers.ceilings:drive_bare_ingest",
    "bare-view": "bench.peers.ceilings:drive_bare_view",
    "redis-pipelined": "bench.peers.redis_peers:drive_pipelined",
    "redis-single": "bench.peers.redis_peers:drive_single",
    "redis-ingest": "bench.peers.redis_peers:drive_ingest",
    "redis-view": "bench.peers.redis_peers:drive_view",
    "statsd-send": "bench.peers.statsd_peer:drive_send",
    "bucketly-send": "bench.bucketly_runners:drive_send",
    "bucketly-ingest": "bench.bucketly_runners:drive_ingest",
    "bucketly-view": "bench.bucketly_runners:drive_view",
}


Driver = Callable[[dict[str, Any]], dict[str, Any]]


def resolve(kind: str) -> Driver:
    module, _, name = DRIVERS[kind].partition(":")
    return cast(Driver, getattr(importlib.import_module(module), name))


def main() -> None:
    kind, options = sys.argv[1], json.loads(sys.argv[2])
    print_result(resolve(kind)(options))


if __name__ == "__main__":
    main()
