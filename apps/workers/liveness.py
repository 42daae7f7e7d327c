"""How alive a worker is, from the age of its last heartbeat. Pure: the caller passes `now`.

Workers heartbeat every 10 s. Silent for SUSPECT_AFTER_S: shown as suspect, not acted on
(a long GC pause, a slow network). Silent for DEAD_AFTER_S: dead, and reconcile replaces it.
"""

from __future__ import annotations

import enum
from datetime import datetime

SUSPECT_AFTER_S = 30.0
DEAD_AFTER_S = 60.0


class Liveness(enum.StrEnum):
    LIVE = "live"
    SUSPECT = "suspect"
    DEAD = "dead"
    # No heartbeat yet: a worker still booting, judged by the boot timeout instead.
    UNKNOWN = "unknown"


def heartbeat_age_s(last_heartbeat_at: datetime | None, now: datetime) -> float | None:
    if last_heartbeat_at is None:
        return None
    return max((now - last_heartbeat_at).total_seconds(), 0.0)


def liveness(last_heartbeat_at: datetime | None, now: datetime) -> Liveness:
    age = heartbeat_age_s(last_heartbeat_at, now)
    if age is None:
        return Liveness.UNKNOWN
    if age >= DEAD_AFTER_S:
        return Liveness.DEAD
    if age >= SUSPECT_AFTER_S:
        return Liveness.SUSPECT
    return Liveness.LIVE
