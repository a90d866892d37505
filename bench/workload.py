"""The unique-clicks workload: deterministic events, pre-encoded frames and exact ground truth.

An event is ``{"url": ..., "user": ...}``: one of ``URLS`` urls and one of ``USERS`` users, drawn
either uniformly or from a Zipf distribution (rank ``k`` has weight ``1 / k**ZIPF_EXPONENT``, for
urls and users independently), from a seeded generator so every process that loads the same
``WorkloadSpec`` sees the same events in the same order.

The orchestrator generates a workload once with ``Workload.generate(spec)`` and ``save()``s it:
the file holds the url and user index arrays and the ground truth, so the subprocesses that drive
each system ``load()`` it in well under a second and never recompute the truth. Events and frames
are built from the arrays on demand (outside any timed section).

``Truth`` is what every runner checks at the end: the number of unique (url, user) pairs and the
number of unique users per url. A run whose count differs is a failed run, not a number.
"""

from __future__ import annotations

import itertools
import json
import random
import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ormsgpack

URLS = 1_000
USERS = 100_000
EVENTS = 1_000_000
#: Events per batch frame: the batch size the issue's measurements used, and a typical client
#: buffer (about 40 KiB of MessagePack).
BATCH = 1_000
#: Classic Zipf: the most popular url gets ~13% of the clicks, the top 10 ~39%.
ZIPF_EXPONENT = 1.0
BUCKET = "clicks"
DISTRIBUTIONS = ("uniform", "zipf")

_HEADER = struct.Struct(">I")


def url_name(i: int) -> str:
    return f"https://example.com/p/{i:04d}"


def user_name(j: int) -> str:
    return f"user-{j:06d}"


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    distribution: str = "uniform"
    events: int = EVENTS
    urls: int = URLS
    users: int = USERS
    seed: int = 7

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}")


@dataclass(frozen=True, slots=True)
class Truth:
    events: int
    unique_pairs: int
    #: Unique users per url, by url name; urls that got no event are absent.
    per_url: dict[str, int] = field(repr=False)

    def check(self, unique_pairs: int, per_url: dict[str, int] | None = None) -> None:
        """Raise ``Miscount`` unless the counts a system reports match the truth exactly."""
        if unique_pairs != self.unique_pairs:
            raise Miscount(f"counted {unique_pairs} unique pairs, expected {self.unique_pairs}")
        if per_url is not None:
            got = {u: n for u, n in per_url.items() if n}
            if got != self.per_url:
                wrong = sorted(set(got.items()) ^ set(self.per_url.items()))[:3]
                raise Miscount(f"per-url counts differ from the truth, e.g. {wrong}")


class Miscount(AssertionError):
    """A system's final count differs from the ground truth: the run failed."""


def truth_of(url_idx: Sequence[int], user_idx: Sequence[int], users: int) -> Truth:
    pairs = set(map(lambda u, v: u * users + v, url_idx, user_idx))
    per: dict[int, int] = {}
    for pair in pairs:
        u = pair // users
        per[u] = per.get(u, 0) + 1
    return Truth(len(url_idx), len(pairs), {url_name(u): n for u, n in sorted(per.items())})


class Workload:
    """One generated workload: index arrays, string tables and the ground truth."""

    def __init__(self, spec: WorkloadSpec, url_idx: array, user_idx: array, truth: Truth):
        self.spec = spec
        self.url_idx = url_idx
        self.user_idx = user_idx
        self.truth = truth
        # One string object per url / user, shared by every event (as a client would build them).
        self.url_names = [url_name(i) for i in range(spec.urls)]
        self.user_names = [user_name(j) for j in range(spec.users)]

    @classmethod
    def generate(cls, spec: WorkloadSpec) -> Workload:
        rng = random.Random(spec.seed)
        n = spec.events
        if spec.distribution == "uniform":
            url_idx = array("I", rng.choices(range(spec.urls), k=n))
            user_idx = array("I", rng.choices(range(spec.users), k=n))
        else:
            url_idx = array("I", _zipf(rng, spec.urls, n))
            user_idx = array("I", _zipf(rng, spec.users, n))
        return cls(spec, url_idx, user_idx, truth_of(url_idx, user_idx, spec.users))

    # -- persistence: one JSON header line, then the two index arrays ------------------------

    def save(self, path: Path) -> None:
        header = {
            "spec": asdict(self.spec),
            "truth": {"events": self.truth.events, "unique_pairs": self.truth.unique_pairs,
                      "per_url": self.truth.per_url},
        }
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            f.write(self.url_idx.tobytes())
            f.write(self.user_idx.tobytes())

    @classmethod
    def load(cls, path: Path | str) -> Workload:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
            rest = f.read()
        spec = WorkloadSpec(**header["spec"])
        url_idx, user_idx = array("I"), array("I")
        half = len(rest) // 2
        url_idx.frombytes(rest[:half])
        user_idx.frombytes(rest[half:])
        return cls(spec, url_idx, user_idx, Truth(**header["truth"]))

    # -- views of the same events for each kind of driver -------------------------------------

    def pairs(self, limit: int | None = None) -> Iterator[tuple[str, str]]:
        urls, users = self.url_names, self.user_names
        n = len(self.url_idx) if limit is None else min(limit, len(self.url_idx))
        for i in range(n):
            yield urls[self.url_idx[i]], users[self.user_idx[i]]

    def events(self, limit: int | None = None) -> list[dict[str, str]]:
        """The events as the dicts a Python user would send."""
        return [{"url": u, "user": v} for u, v in self.pairs(limit)]

    def batches(self, size: int = BATCH) -> list[list[dict[str, str]]]:
        events = self.events()
        return [events[i : i + size] for i in range(0, len(events), size)]

    def frame_bodies(self, size: int = BATCH, first_id: int = 1) -> list[bytes]:
        """MessagePack bodies of the batch ``send`` requests, as on bucketly's wire."""
        return [
            encode_send(first_id + k, batch) for k, batch in enumerate(self.batches(size))
        ]

    def frames(self, size: int = BATCH, first_id: int = 1) -> list[bytes]:
        """``frame_bodies`` with their 4-byte length headers, ready to write to a socket."""
        return [frame(body) for body in self.frame_bodies(size, first_id)]

    def truth_for(self, limit: int) -> Truth:
        """Ground truth of the first ``limit`` events (for drivers that send a subset)."""
        n = min(limit, len(self.url_idx))
        return truth_of(self.url_idx[:n], self.user_idx[:n], self.spec.users)


def encode_send(request_id: int, events: list[dict[str, str]], bucket: str = BUCKET) -> bytes:
    return ormsgpack.packb(
        {"id": request_id, "op": "send", "bucket": bucket, "events": events, "ack": True}
    )


def frame(body: bytes) -> bytes:
    return _HEADER.pack(len(body)) + body


def _zipf(rng: random.Random, n: int, k: int) -> list[int]:
    cum = list(itertools.accumulate(1.0 / (r**ZIPF_EXPONENT) for r in range(1, n + 1)))
    # Rank r -> index r-1, then a fixed shuffle so popularity is not correlated with the name.
    order = list(range(n))
    random.Random(n).shuffle(order)
    return [order[i] for i in rng.choices(range(n), cum_weights=cum, k=k)]


def describe(spec: WorkloadSpec, truth: Truth) -> dict[str, Any]:
    return {
        "distribution": spec.distribution,
        "events": spec.events,
        "urls": spec.urls,
        "users": spec.users,
        "unique_pairs": truth.unique_pairs,
    }
