"""What a worker's heartbeat says about its requests: the handler latency buckets.

Workers count handler durations into these fixed buckets (upper bounds in milliseconds,
the last one open-ended); the control plane merges the counts of many workers and reads
percentiles from them, and serves them to Prometheus as a histogram. A fixed set, rather
than a sample, because counts of the same buckets add up across workers exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

# Upper bounds (ms) of every bucket but the last, which holds everything slower.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1


def latency_bucket(duration_ms: float) -> int:
    """The index of the bucket `duration_ms` falls in."""
    for index, bound in enumerate(LATENCY_BOUNDS_MS):
        if duration_ms <= bound:
            return index
    return len(LATENCY_BOUNDS_MS)


def latency_quantile_ms(counts: Sequence[int], q: float) -> float | None:
    """The `q` quantile (0..1) of the durations counted in `counts` (one per bucket),
    interpolated linearly inside its bucket as Prometheus' histogram_quantile does; the
    open last bucket answers its lower bound. None when nothing was counted."""
    total = sum(counts)
    if total <= 0 or len(counts) != LATENCY_BUCKETS:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS_MS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_MS[-1]
