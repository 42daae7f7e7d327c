"""The autoscaler's decision, as a pure function: policy, what was measured, the windows'
state and the time in; the action, its reason and the windows' next state out.

After KEDA's Kafka scaler: lag is the request topic's end offset minus the consumer
group's committed offset, summed over partitions (a partition with no commit counts from
its earliest offset, as the workers' `auto.offset.reset=earliest` reads it); the target
is `ceil(lag / lag_per_worker)`, never more workers than partitions (an extra consumer
would own none). Time in queue is ours (apps/provisioning/queuetime.py): how long the
oldest message not yet committed has waited, against an optional `max_queue_seconds`; it
catches the backlog that lag misses, a few slow requests that are few messages but long
waits, and it adds one worker at a time (a wait says nothing of how many would clear it).
Unlike an HPA, a change needs its condition to hold for a whole window, and none follows
another within a cooldown, so one burst or a lull of one tick moves nothing. Hysteresis:
pressure is lag per worker above the threshold or time in queue above its maximum; idle
is lag that would stay under half the threshold with one worker fewer, with the
in-flight requests fitting in half of the remaining workers' slots and (when a maximum
is set and the time was measured) a time in queue under half the maximum; between the
two, the fleet holds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Policy:
    min_workers: int
    max_workers: int
    lag_per_worker: int
    scale_up_window_s: float
    scale_down_window_s: float
    scale_up_cooldown_s: float
    scale_down_cooldown_s: float
    max_queue_seconds: float | None = None  # None: time in queue is not a trigger


@dataclass(frozen=True)
class Observed:
    """What the autoscaler saw. `lag` None: it could not be measured. `bounds` are the
    live deployment's min_workers and max_workers; `concurrency` is the slots of one
    worker. `queue_seconds`: how long the oldest uncommitted message has waited (None:
    not measured, as when the policy sets no maximum)."""

    lag: int | None
    workers: int
    in_flight: int
    concurrency: int
    partitions: int
    bounds: tuple[int, int]
    queue_seconds: float | None = None


@dataclass(frozen=True)
class Windows:
    pressure_since: datetime | None = None
    idle_since: datetime | None = None
    last_scaled_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    action: str  # up, down, hold
    reason: str
    message: str
    workers: int  # the desired count after the decision
    windows: Windows


def decide(*, policy: Policy, observed: Observed, windows: Windows, now: datetime) -> Decision:
    workers = observed.workers
    low = max(policy.min_workers, observed.bounds[0])
    high = max(low, min(policy.max_workers, observed.bounds[1], observed.partitions))

    def hold(reason: str, message: str, after: Windows = windows) -> Decision:
        return Decision("hold", reason, message, workers, after)

    def scale(action: str, reason: str, to: int, message: str) -> Decision:
        return Decision(action, reason, message, to, Windows(last_scaled_at=now))

    if workers < low:
        return scale("up", "below_min", low, f"{workers} worker(s) is below the minimum {low}")
    if workers > high:
        return scale("down", "above_max", high, f"{workers} worker(s) is above the maximum {high}")
    lag = observed.lag
    if lag is None:
        return hold(
            "lag_unknown",
            "lag could not be measured; holding",
            Windows(last_scaled_at=windows.last_scaled_at),
        )
    threshold = policy.lag_per_worker
    per_worker = lag / workers if workers else float(lag)
    lag_pressure = lag > threshold * workers if workers else lag > 0
    waited, max_wait = observed.queue_seconds, policy.max_queue_seconds
    queue_pressure = max_wait is not None and waited is not None and waited > max_wait
    pressure = lag_pressure or queue_pressure
    idle = (
        workers > 0
        and 2 * lag <= threshold * (workers - 1)
        and 2 * observed.in_flight <= observed.concurrency * (workers - 1)
        and (max_wait is None or waited is None or 2 * waited <= max_wait)
    )
    windows = dataclasses.replace(
        windows,
        pressure_since=(windows.pressure_since or now) if pressure else None,
        idle_since=(windows.idle_since or now) if idle else None,
    )
    seen = f"lag {lag} on {workers} worker(s) ({per_worker:.1f} per worker, threshold {threshold})"
    if max_wait is not None:
        seen += (
            f", oldest waiting {waited:.1f}s (max {max_wait:g}s)"
            if waited is not None
            else f", time in queue unknown (max {max_wait:g}s)"
        )
    since_scaled = _seconds(now, windows.last_scaled_at)
    if pressure:
        held = _seconds(now, windows.pressure_since) or 0.0
        if held < policy.scale_up_window_s:
            above = (
                "lag and time in queue above their limits"
                if lag_pressure and queue_pressure
                else "lag above the threshold"
                if lag_pressure
                else "time in queue above the maximum"
            )
            return hold(
                "pressure_window",
                f"{seen}: {above} for {held:.0f}s of the {policy.scale_up_window_s:.0f}s window",
                windows,
            )
        if workers >= high:
            return hold("at_max", f"{seen}: would add a worker but {high} is the maximum", windows)
        if since_scaled is not None and since_scaled < policy.scale_up_cooldown_s:
            return hold(
                "cooldown",
                f"{seen}: would add a worker but the last change was {since_scaled:.0f}s ago "
                f"(cooldown {policy.scale_up_cooldown_s:.0f}s)",
                windows,
            )
        # Lag says how many workers would clear the backlog; a long wait alone, one more.
        target = min(high, max(workers + 1, math.ceil(lag / threshold) if lag_pressure else 0))
        return scale(
            "up",
            "lag_above" if lag_pressure else "queue_time_above",
            target,
            f"{seen} for {held:.0f}s: {workers} -> {target} worker(s)",
        )
    if idle:
        held = _seconds(now, windows.idle_since) or 0.0
        if held < policy.scale_down_window_s:
            return hold(
                "idle_window",
                f"{seen}, {observed.in_flight} in flight: idle for {held:.0f}s of the "
                f"{policy.scale_down_window_s:.0f}s window",
                windows,
            )
        if workers <= low:
            return hold("at_min", f"{seen}: idle, and {low} is the minimum", windows)
        if since_scaled is not None and since_scaled < policy.scale_down_cooldown_s:
            return hold(
                "cooldown",
                f"{seen}: would remove a worker but the last change was {since_scaled:.0f}s "
                f"ago (cooldown {policy.scale_down_cooldown_s:.0f}s)",
                windows,
            )
        return scale(
            "down",
            "idle",
            workers - 1,
            f"{seen}, {observed.in_flight} in flight, idle for {held:.0f}s: "
            f"{workers} -> {workers - 1} worker(s), the removed one drains",
        )
    return hold("steady", f"{seen}: within the band, holding", windows)


def _seconds(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else (now - since).total_seconds()
