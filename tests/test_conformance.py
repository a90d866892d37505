"""The conformance vectors (docs/conformance/v1.json) against a real bucketlyd.

The vectors are the byte-level part of the specification: a server in another language checks
itself with them, following the rules in docs/protocol.md; here the reference server does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bucketly.testing import RunningServer, run_server

from . import conformance
from .conftest import RawConnection

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

VECTORS = conformance.load()
CASES = VECTORS["cases"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # As the vectors say: defaults, an empty database file, the built-in handlers.
    with run_server(database=tmp_path_factory.mktemp("vectors") / "db.dat") as server:
        yield server


def test_the_vectors_are_the_cases_of_the_recipe() -> None:
    """The file is what tests/conformance.py writes: regenerate it rather than edit it."""
    assert VECTORS["protocol"] == 1
    assert [case["name"] for case in CASES] == [case[0] for case in conformance.CASES]
    for case, (_, about, writes, replies, closes) in zip(CASES, conformance.CASES, strict=True):
        assert case["about"] == about
        assert bytes.fromhex(case["send"]) == b"".join(writes)
        assert len(case["expect"]) == replies
        assert case["then"] == ("close" if closes else "open")


def test_every_case_in_order(reference: RunningServer) -> None:
    # In file order, on one server: later cases use the bucket an earlier one created.
    for case in CASES:
        try:
            conformance.check_case(case, reference.host, reference.port)
        except AssertionError as exc:
            raise AssertionError(f"conformance case {case['name']!r}: {exc}") from exc


def test_a_difference_is_caught(reference: RunningServer) -> None:
    """The check is not vacuous: a vector that expects another reply fails it."""
    case = dict(next(c for c in CASES if c["name"] == "ping"))
    case["expect"] = [conformance.request({"id": 1, "ok": True, "result": "pang"}).hex()]
    with pytest.raises(AssertionError):
        conformance.check_case(case, reference.host, reference.port)


def test_the_rules_ignore_only_wording() -> None:
    message = {"id": 1, "ok": False, "error": {"code": "bad_frame", "message": "x"}}
    other = {"id": 1, "ok": False, "error": {"code": "bad_frame", "message": "y"}}
    assert conformance.normalize(message) == conformance.normalize(other)
    assert conformance.normalize(message) != conformance.normalize(
        {**other, "error": {"code": "bad_request", "message": "x"}}
    )
    assert Path(conformance.VECTORS).is_file()


def _example_reply(op: str) -> dict[str, Any]:
    """The result of the reply in the example of ``op`` in docs/protocol.md."""
    lines = PROTOCOL.read_text().splitlines()
    start = lines.index(f"### `{op}`")
    reply = next(line for line in lines[start:] if line.startswith("← "))
    return json.loads(reply[2:])["result"]  # type: ignore[no-any-return]


def test_examples_show_every_key_the_server_sends(reference: RunningServer) -> None:
    """The bucket_info and stats examples list the keys a real reply has, no more, no less."""
    conn = RawConnection(reference.host, reference.port)
    try:
        conn.auth()
        conn.call(1, "create_bucket", bucket="clicks", handler="UniqueCount")
        info = conn.call(2, "bucket_info", bucket="clicks").result
        stats = conn.call(3, "stats").result
    finally:
        conn.close()
    assert set(_example_reply("bucket_info")) == set(info)
    example = _example_reply("stats")
    assert set(example) == set(stats)
    assert set(example["buckets"]["clicks"]) == set(stats["buckets"]["clicks"])
    assert set(example["durable_log"]) == set(stats["durable_log"])
