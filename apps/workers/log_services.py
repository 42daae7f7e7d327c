"""Writes of worker logs: ingest a worker's batch, and keep every worker within the
retention bound (at most MEMRUN_LOG_MAX_LINES_PER_WORKER lines, none older than
MEMRUN_LOG_RETENTION_S by the worker's clock).

Retention is enforced cheaply: an ingest prunes its own worker when its batch takes the
global line id past a multiple of MEMRUN_LOG_PRUNE_EVERY_LINES (so a worker is pruned
about that often per line it sends, busy workers most), and the beat task
`prune_worker_logs` sweeps every worker as a backstop. So a worker may hold a little more
than the bound between two prunes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.common.errors import DomainError
from apps.workers.models import Worker, WorkerLogLine

# What one POST may carry (the API refuses a larger body before reading it); the
# worker's shipper sends well under both.
MAX_BATCH_LINES = 1000
MAX_BATCH_BYTES = 1024 * 1024
_TRUNCATED = "... [{} more characters]"


@dataclass(frozen=True)
class LogLineData:
    """One line as the worker sent it."""

    ts: datetime
    level: str
    event: str
    request_id: str
    message: str
    fields: dict[str, Any]


def worker_log_ingest(
    *, worker: Worker, lines: list[LogLineData], now: datetime | None = None
) -> int:
    """Store `lines` of `worker` in one INSERT; returns how many. Messages longer than
    WorkerLogLine.MESSAGE_MAX_CHARS are cut, saying by how much; more than
    MAX_BATCH_LINES lines is a 413."""
    if len(lines) > MAX_BATCH_LINES:
        raise DomainError(
            f"the log batch has {len(lines)} lines; the limit is {MAX_BATCH_LINES}: "
            "send smaller batches",
            status=413,
            details={"lines": len(lines), "limit": MAX_BATCH_LINES},
        )
    if not lines:
        return 0
    received_at = now or timezone.now()
    rows = [
        WorkerLogLine(
            worker=worker,
            service_id=worker.service_id,
            ts=line.ts,
            received_at=received_at,
            level=line.level,
            event=line.event,
            request_id=line.request_id,
            message=_bounded(line.message),
            fields=line.fields,
        )
        for line in lines
    ]
    with transaction.atomic():
        created = WorkerLogLine.objects.bulk_create(rows)
    ids = [row.pk for row in created if row.pk is not None]
    if ids and _crosses_prune_mark(min(ids), max(ids)):
        worker_logs_prune(worker=worker, now=received_at)
    return len(rows)


def worker_logs_prune(*, worker: Worker | None = None, now: datetime | None = None) -> int:
    """Delete `worker`'s (default: every worker's) lines beyond the retention bound;
    returns how many went. Two queries per worker: find the count cut-off, delete."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.MEMRUN_LOG_RETENTION_S)
    worker_ids = (
        [worker.pk] if worker is not None else list(Worker.objects.values_list("pk", flat=True))
    )
    return sum(_prune_one(worker_id=worker_id, cutoff=cutoff) for worker_id in worker_ids)


def _prune_one(*, worker_id: int, cutoff: datetime) -> int:
    keep = settings.MEMRUN_LOG_MAX_LINES_PER_WORKER
    lines = WorkerLogLine.objects.filter(worker_id=worker_id)
    # The newest line beyond the count bound, found on the (worker, ts) index.
    beyond = lines.order_by("-ts", "-id").values_list("ts", "pk")[keep : keep + 1].first()
    doomed = Q(ts__lt=cutoff)
    if beyond is not None:
        ts, pk = beyond
        doomed |= Q(ts__lt=ts) | Q(ts=ts, pk__lte=pk)
    deleted, _ = lines.filter(doomed).delete()
    return deleted


def _crosses_prune_mark(first_id: int, last_id: int) -> bool:
    every = settings.MEMRUN_LOG_PRUNE_EVERY_LINES
    return (first_id - 1) // every != last_id // every


def _bounded(message: str) -> str:
    limit = WorkerLogLine.MESSAGE_MAX_CHARS
    if len(message) <= limit:
        return message
    # Leave room for the note (its count has at most as many digits as the length).
    head = limit - len(_TRUNCATED.format(len(message)))
    return message[:head] + _TRUNCATED.format(len(message) - head)
