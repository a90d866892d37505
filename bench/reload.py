"""The pause a reload of the handlers module causes (issue 11).

    python bench/reload.py [--pairs 1000000] [--runs 5]

A real bucketlyd on the README's example handlers (examples/hndlrs.py, ``UniqueClicks``: a
``bucketly.UniqueIndex``) holds ``--pairs`` distinct (url, user) pairs in one bucket; the
module is then reloaded ``--runs`` times (its file unchanged: the whole state is carried every
time all the same). Reported: the bucket's pause (``paused_seconds`` of the reload's reply: the
time no request on any bucket could run), median and max, and the state carried, in bytes. A
view after each reload checks that the count is still exact.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bucketly.testing import run_server

HANDLERS = Path(__file__).resolve().parent.parent / "examples" / "hndlrs.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, run_server(
        HANDLERS, Path(tmp) / "bench.dat"
    ) as server, server.client(batch_size=10_000) as client:
        client.create_bucket("clicks", "UniqueClicks")
        urls = 1000
        for i in range(options.pairs):
            client.send("clicks", {"url": f"/page/{i % urls}", "user": f"user-{i}"})
        client.flush()
        expected = options.pairs // urls
        pauses, whole, sizes = [], [], []
        for _ in range(options.runs):
            result = client.reload()
            bucket = result["buckets"]["clicks"]
            assert bucket["status"] == "reloaded"
            pauses.append(bucket["paused_seconds"])
            whole.append(result["paused_seconds"])
            sizes.append(bucket["state_bytes"])
            assert client.view("clicks", "count", url="/page/7") == expected
    print(f"reload of a bucket of {options.pairs:,} unique pairs (UniqueIndex), "
          f"{options.runs} runs")
    print(f"  bucket pause: median {1000 * statistics.median(pauses):.1f} ms, "
          f"max {1000 * max(pauses):.1f} ms")
    print(f"  whole reload (import included): median {1000 * statistics.median(whole):.1f} ms, "
          f"max {1000 * max(whole):.1f} ms")
    print(f"  state carried: {sizes[0]:,} bytes")


if __name__ == "__main__":
    main()
