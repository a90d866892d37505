"""``bucketly.histogram.Histogram``: counts by Prometheus's ``le`` rule, and its cumulative form."""

from __future__ import annotations

import pytest

from bucketly.histogram import BATCH_BOUNDS, LATENCY_BOUNDS, LOOP_LAG_BOUNDS, Histogram


def test_a_value_counts_in_the_first_bucket_whose_bound_is_at_least_it() -> None:
    histogram = Histogram((1, 2, 4))
    for value in (0, 1, 1.5, 2, 4, 4.01, 100):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1, 2]  # le=1: 0, 1; le=2: 1.5, 2; le=4: 4; +Inf: 2
    assert histogram.count == 7
    assert histogram.sum == pytest.approx(112.51)
    assert histogram.cumulative() == [("1.0", 2), ("2.0", 4), ("4.0", 5), ("+Inf", 7)]


def test_an_empty_histogram_has_every_bucket_at_0() -> None:
    histogram = Histogram(LATENCY_BOUNDS)
    assert histogram.count == 0 and histogram.sum == 0
    assert [count for _, count in histogram.cumulative()] == [0] * (len(LATENCY_BOUNDS) + 1)


@pytest.mark.parametrize("bounds", [LATENCY_BOUNDS, LOOP_LAG_BOUNDS, BATCH_BOUNDS])
def test_the_bounds_in_use_increase(bounds: tuple[float, ...]) -> None:
    assert list(bounds) == sorted(set(bounds))


def test_bounds_that_do_not_increase_are_refused() -> None:
    for bounds in ((2, 1), (1, 1), ()):
        with pytest.raises(ValueError, match="must increase"):
            Histogram(bounds)
