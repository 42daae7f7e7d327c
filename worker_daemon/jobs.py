"""A message on its way through the worker (`Job`), and how it left (`Status`).

The poll thread makes a Job per message and is the only reader of the completions
queue, where every stage reports `(job, status)`. The status says whether the job's
offset may now be committed (`finishes`) and whether its slot is free (`frees_slot`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from worker_daemon.decode import Request
from worker_daemon.offsets import PartitionTracker
from worker_daemon.outcomes import Failure


class Status(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # its outcome already existed: a redelivery
    # The watchdog answered a handler past its deadline; its thread is still inside it.
    ABANDONED = "abandoned"
    FREED = "freed"  # an abandoned handler's thread came back
    UNDELIVERED = "undelivered"  # the outcome could not be stored: it runs again later
    RETURNED = "returned"  # not started before shutdown: its next owner runs it

    @property
    def finishes(self) -> bool:
        return self in _FINISHES

    @property
    def frees_slot(self) -> bool:
        return self is not Status.ABANDONED


_FINISHES = frozenset(
    {Status.OK, Status.FAILED, Status.TIMED_OUT, Status.SKIPPED, Status.ABANDONED}
)


@dataclass(slots=True, eq=False)
class Job:
    """One message. `recheck`: it may have been handled before (delivered again after a
    crash or rebalance), so its outcome is looked up before its handler runs. The
    answer fields (`status`, `body`, ...) are filled by whoever answers for it."""

    seq: int
    message: Any  # confluent_kafka.Message
    offset: int
    tracker: PartitionTracker
    recheck: bool
    request: Request | None = None
    timeout_s: float = 0.0
    status: Status = Status.OK
    body: bytes | None = None
    failure: Failure | None = None
    duration_ms: float = 0.0


Completion = tuple[Job, Status]
