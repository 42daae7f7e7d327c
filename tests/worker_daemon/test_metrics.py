"""Request numbers: totals since start and a one-minute window in fixed latency buckets."""

from __future__ import annotations

from memrun.wire.stats import LATENCY_BOUNDS_MS, latency_bucket, latency_quantile_ms
from worker_daemon.metrics import RequestMetrics


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_last_minute_forgets_what_is_older_and_totals_keep_it() -> None:
    clock = Clock()
    metrics = RequestMetrics(clock=clock)
    metrics.observe(duration_ms=3, ok=True)
    metrics.observe(duration_ms=400, ok=False)
    clock.now += 30
    metrics.observe(duration_ms=40, ok=True)
    first = metrics.snapshot()
    assert (first["total"], first["errors"], first["last_minute"]["requests"]) == (3, 1, 3)
    assert first["latency_sum_ms"] == 443

    clock.now += 45  # the first two are 75 s old now, the third 45 s
    later = metrics.snapshot()
    assert (later["total"], later["errors"]) == (3, 1)
    assert later["last_minute"]["requests"] == 1 and later["last_minute"]["errors"] == 0
    assert later["last_minute"]["latency_counts"][latency_bucket(40)] == 1
    # The slot the first requests used is reused, not added to, a minute on.
    clock.now = 1060.2
    metrics.observe(duration_ms=3, ok=True)
    assert metrics.snapshot()["last_minute"]["requests"] == 2


def test_percentiles_come_from_the_buckets() -> None:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    assert latency_quantile_ms(counts, 0.5) is None
    counts[latency_bucket(7)] = 99  # (5, 10]
    counts[latency_bucket(90_000)] = 1  # beyond the last bound
    p50 = latency_quantile_ms(counts, 0.5)
    assert p50 is not None and 5 < p50 <= 10
    assert latency_quantile_ms(counts, 1.0) == LATENCY_BOUNDS_MS[-1]
    assert latency_bucket(0) == 0 and latency_bucket(LATENCY_BOUNDS_MS[0]) == 0
