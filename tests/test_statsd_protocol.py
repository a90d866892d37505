"""The statsd line parser (sans I/O), the StatsdMetrics handler and the Graphite rendering, in
memory. The listener, with real clients, is tested in test_statsd.py."""

from __future__ import annotations

import collections
import math
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bucketly.protocol.statsd import (
    MAX_LINE,
    REJECT_REASONS,
    LineBuffer,
    Metric,
    StatsdParser,
    parse,
    parse_line,
)
from bucketly.server.statsd_defaults import LISTENER_REASONS
from bucketly.statsd import (
    EXACT_SAMPLES,
    RELATIVE_ACCURACY,
    StatsdMetrics,
    graphite_lines,
    graphite_name,
)


def _parse(data: bytes) -> tuple[list[Metric], dict[str, int]]:
    rejects: collections.Counter[str] = collections.Counter()
    return parse(data, rejects), dict(rejects)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"hits:1|c", [Metric("hits", "c", 1.0)]),
        (b"hits:2.5|c|@0.1", [Metric("hits", "c", 2.5, 0.1)]),
        (b"temp:-3|g", [Metric("temp", "gd", -3.0)]),
        (b"temp:+3|g", [Metric("temp", "gd", 3.0)]),
        (b"temp:42|g", [Metric("temp", "g", 42.0)]),
        (b"rt:12.5|ms", [Metric("rt", "ms", 12.5)]),
        (b"rt:1:2:3|h", [Metric("rt", "h", 1.0), Metric("rt", "h", 2.0), Metric("rt", "h", 3.0)]),
        (b"size:7|d|#env:prod,az:b", [Metric("size", "d", 7.0, 1.0, ("az:b", "env:prod"))]),
        (b"users:ann:x|s", [Metric("users", "s", "ann:x")]),
        (b"hits:1|c|@0.5|#a|c:abc|T1700000000|e:x|card:low",
         [Metric("hits", "c", 1.0, 0.5, ("a",))]),
        (b"hits:1|c\r", [Metric("hits", "c", 1.0)]),
    ],
)
def test_each_accepted_form(line: bytes, expected: list[Metric]) -> None:
    assert _parse(line) == (expected, {})


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"hits", "no_value"),
        (b"hits:1", "no_value"),
        (b":1|c", "empty_name"),
        (b"hits:1|x", "bad_type"),
        (b"hits:abc|c", "bad_value"),
        (b"hits:nan|c", "bad_value"),
        (b"rt:1:two:3|ms", "bad_value"),
        (b"users:|s", "bad_value"),
        (b"hits:1|c|@0", "bad_sample_rate"),
        (b"hits:1|c|@1.5", "bad_sample_rate"),
        (b"hits:1|c|@x", "bad_sample_rate"),
        (b"hits:1|c|what", "bad_field"),
        (b"\xff:1|c", "not_utf8"),
        (b"_e{5,4}:title|text", "unsupported"),
        (b"_sc|check|0", "unsupported"),
    ],
)
def test_each_reject_is_counted_by_its_reason(line: bytes, reason: str) -> None:
    assert _parse(line) == ([], {reason: 1})


def test_a_bad_line_does_not_lose_the_rest_of_its_datagram() -> None:
    metrics, rejects = _parse(b"a:1|c\nbroken\n\nb:2|g\nc:1|zz\n")
    assert metrics == [Metric("a", "c", 1.0), Metric("b", "g", 2.0)]
    assert rejects == {"no_value": 1, "bad_type": 1}


def test_line_buffer_cut_at_every_boundary_gives_every_line_and_the_last() -> None:
    stream = b"a:1|c\nb:2|g\nrt:3|ms\nlast:4|c"  # no final newline: statsd's "newline trap"
    expected = _parse(stream)[0]
    for size in range(1, len(stream) + 1):
        rejects: collections.Counter[str] = collections.Counter()
        buffer = LineBuffer(rejects)
        got: list[Metric] = []
        for start in range(0, len(stream), size):
            got += parse(buffer.feed(stream[start:start + size]), rejects)
        got += parse(buffer.close(), rejects)
        assert got == expected, size
        assert not rejects


def test_line_buffer_skips_an_endless_line_and_counts_it() -> None:
    rejects: collections.Counter[str] = collections.Counter()
    buffer = LineBuffer(rejects, max_line=100)
    assert buffer.feed(b"x" * 150) == b""
    assert buffer.feed(b"y" * 150) == b""
    lines = buffer.feed(b"zz\nok:1|c\n")
    assert parse(lines, rejects) == [Metric("ok", "c", 1.0)]
    assert rejects == {"line_too_long": 1}
    assert MAX_LINE >= 64 * 1024


def _handler(events: list[Metric], percentiles: tuple[float, ...] = (90.0,)) -> StatsdMetrics:
    handler = StatsdMetrics({"percentiles": list(percentiles)})
    handler.on_events(events)
    return handler


def test_counters_apply_sample_rates_and_reset_at_each_flush() -> None:
    handler = _handler([Metric("hits", "c", 1.0, 0.1), Metric("hits", "c", 2.0),
                        Metric("hits", "c", 1.0, 1.0, ("env:prod",))])
    current = handler.counter("hits")
    assert current is not None and current["count"] == 12.0 and current["rate"] > 0
    closed = handler.statsd_flush(handler.started + 10, 10.0)
    assert closed.counter("hits") == {"count": 12.0, "rate": 1.2}
    assert closed.counter("hits;env:prod") == {"count": 1.0, "rate": 0.1}
    assert handler.counter("hits", interval="last") == {"count": 12.0, "rate": 1.2}
    assert handler.counter("hits", tags=["env:prod"], interval="last") == {"count": 1.0,
                                                                           "rate": 0.1}
    assert handler.counter("hits") is None  # the new interval has none yet


def test_gauges_set_and_change_and_outlive_a_flush() -> None:
    handler = _handler([Metric("g", "g", 10.0), Metric("g", "gd", -3.0), Metric("g", "gd", 5.0),
                        Metric("new", "gd", -2.0)])
    handler.statsd_flush(handler.started + 10, 10.0)
    handler.on_events([Metric("g", "gd", 1.0)])
    assert handler.gauge("g", interval="last") == 12.0
    assert handler.gauge("g") == 13.0
    assert handler.gauge("new") == -2.0


def test_timers_are_exact_but_for_quantiles_within_the_sketch_bound() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(5000)]
    handler = _handler([Metric("rt", "ms", v, 0.5) for v in values], (90.0, 99.9))
    closed = handler.statsd_flush(handler.started + 10, 10.0)
    summary = closed.timer("rt", handler.percentiles)
    assert summary is not None
    assert summary["count"] == 10000.0  # sample rate 0.5: each stands for two
    assert summary["count_ps"] == 1000.0
    assert summary["samples"] == 5000
    assert summary["sum"] == pytest.approx(math.fsum(values), rel=1e-12)
    assert summary["lower"] == min(values) and summary["upper"] == max(values)
    assert summary["mean"] == pytest.approx(math.fsum(values) / 5000, rel=1e-12)
    ordered = sorted(values)
    for key, q in (("median", 0.5), ("upper_90", 0.9), ("upper_99_9", 0.999)):
        # DDSketch's rank is floor(q * (n - 1)); its value within RELATIVE_ACCURACY of it.
        true = ordered[int(q * (len(ordered) - 1))]
        assert abs(summary[key] - true) <= RELATIVE_ACCURACY * true, key


def test_few_timer_samples_give_statsds_exact_percentiles() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    handler = _handler([Metric("rt", "ms", v) for v in reversed(values)], (90.0, 50.0, 99.0))
    summary = handler.timer("rt")
    assert summary is not None
    # statsd: upper_90 of 1..10 is the 9th value; the median of an even count, the middle mean.
    assert (summary["upper_90"], summary["upper_50"], summary["upper_99"]) == (9.0, 5.0, 10.0)
    assert summary["median"] == 5.5
    assert EXACT_SAMPLES < 5000  # the test above goes beyond it, into the sketch


def test_sets_count_distinct_members_exactly_per_interval() -> None:
    handler = _handler([Metric("u", "s", name) for name in ["ann", "bob", "ann", "cy"]])
    assert handler.set("u") == {"count": 3}
    handler.statsd_flush(handler.started + 1)
    handler.on_events([Metric("u", "s", "ann")])
    assert handler.set("u") == {"count": 1}
    assert handler.set("u", interval="last") == {"count": 3}


def test_a_bad_interval_name_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        _handler([]).metrics(interval="yesterday")


def test_graphite_lines_use_statsds_names() -> None:
    handler = _handler([
        Metric("api.hits", "c", 5.0, 0.5),
        Metric("api.rt", "ms", 10.0), Metric("api.rt", "ms", 30.0),
        Metric("mem used", "g", 7.5),
        Metric("users/x", "s", "ann"),
        Metric("api.hits", "c", 1.0, 1.0, ("az:b", "canary")),
    ])
    closed = handler.statsd_flush(1700000010.0, 10.0)
    assert graphite_lines(closed, (90.0,)) == [
        "stats.counters.api.hits.rate 1 1700000010",
        "stats.counters.api.hits.count 10 1700000010",
        "stats.counters.api.hits.rate;az=b;canary=true 0.1 1700000010",
        "stats.counters.api.hits.count;az=b;canary=true 1 1700000010",
        "stats.timers.api.rt.count 2 1700000010",
        "stats.timers.api.rt.count_ps 0.2 1700000010",
        "stats.timers.api.rt.sum 40 1700000010",
        "stats.timers.api.rt.sum_squares 1000 1700000010",
        "stats.timers.api.rt.mean 20 1700000010",
        "stats.timers.api.rt.std 10 1700000010",
        "stats.timers.api.rt.lower 10 1700000010",
        "stats.timers.api.rt.upper 30 1700000010",
        "stats.timers.api.rt.median 20 1700000010",
        "stats.timers.api.rt.upper_90 30 1700000010",
        "stats.gauges.mem_used 7.5 1700000010",
        "stats.sets.users-x.count 1 1700000010",
    ]
    assert graphite_name("a b/c*d") == "a_b-cd"


def test_docs_statsd_md_lists_every_reject_reason() -> None:
    text = (Path(__file__).parent.parent / "docs" / "statsd.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \| (?!counter|gauge|timer|histogram|distri|set)", text,
                            re.M)
    assert sorted(documented) == sorted((*REJECT_REASONS, *LISTENER_REASONS))
    assert f"{EXACT_SAMPLES:,} samples" in text
    assert f"within {RELATIVE_ACCURACY:.0%}" in text


_pieces = st.sampled_from([
    b"a", b"b.c", b"", b":", b"|", b"1", b"-2.5", b"+3", b"x", b"nan", b"c", b"g", b"ms", b"s",
    b"d", b"h", b"@0.5", b"@2", b"#env:prod,az", b"#", b"c:id", b"T17", b"\r", b"\xff", b"_e{",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_pieces, max_size=8).map(b"".join), max_size=6))
def test_the_fast_path_gives_what_parse_line_gives(lines: list[bytes]) -> None:
    """StatsdParser's fast path (and its memos, over two passes) agrees with parse_line."""
    expected: list[Metric] = []
    reasons: collections.Counter[str] = collections.Counter()
    for line in lines:
        if line:
            reason = parse_line(line, expected)
            if reason is not None:
                reasons[reason] += 1
    parser = StatsdParser()
    data = b"\n".join(lines)
    for _ in range(2):
        assert parser.parse(data) == expected
    assert parser.rejects == reasons + reasons


def test_state_survives_a_snapshot_round_trip_exact_and_sketched() -> None:
    """snapshot() is plain data the snapshot codec holds (a reload, SIGHUP), restore() gives
    the same answers: timers exact and sketched, sets, gauges, the last interval."""
    from bucketly.buckets.snapshot_codec import pack_state, unpack_state

    rng = random.Random(3)
    handler = _handler([Metric("big", "ms", rng.uniform(1, 500)) for _ in range(3000)]
                       + [Metric("small", "ms", 4.0), Metric("c", "c", 2.0, 0.5),
                          Metric("g", "g", 9.0), Metric("u", "s", "ann")], (90.0, 99.0))
    handler.statsd_flush(handler.started + 10, 10.0)
    handler.on_events([Metric("big", "ms", v) for v in (3.0, 7.0)] + [Metric("u", "s", "bob")])
    copy = StatsdMetrics({})
    copy.restore(unpack_state(pack_state(handler.snapshot())))
    assert copy.metrics(interval="last") == handler.metrics(interval="last")
    now, before = copy.metrics(), handler.metrics()  # "current" ends now: rates differ
    assert (now["start"], now["gauges"], now["sets"]) == (before["start"], before["gauges"],
                                                          before["sets"])
    for summary in (now["timers"]["big"], before["timers"]["big"]):
        summary.pop("count_ps")
    assert now["timers"] == before["timers"]
    assert copy.percentiles == (90.0, 99.0)
    copy.on_events([Metric("big", "ms", 1.0)])  # the restored sketch goes on taking samples
    assert copy.timer("big")["samples"] == 3
