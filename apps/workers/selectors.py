"""Reads of workers and of their logs.

Log pages are one worker's lines, or a service's merged across its workers, in time
order (newest last), with a cursor to ask for what came after. Following by time alone
would miss lines: workers ship in batches, so a line often arrives after lines of another
worker with a later `ts` were read, and a worker cut off from the control plane sends
minutes of lines late. So the cursor (`next_since`, passed back as `since`) holds two
things: a position in time order, `(ts, id)`, and the highest line id that existed when
the page was read (the high water). The next page is first every line that arrived since
then with a `ts` at or before the position (late lines, by arrival), then the lines after
the position (by time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import F, Max, Q, QuerySet

from apps.common.credentials import secret_hash
from apps.common.errors import DomainError
from apps.services.models import Service
from apps.workers.models import LogLevel, Worker, WorkerLogLine

LOG_DEFAULT_LIMIT = 100
LOG_MAX_LIMIT = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_CURSOR = re.compile(r"c(-?\d+)\.(\d+)\.(\d+)")
# Severity order: `level=warning` reads warning, error and critical.
_LEVELS = list(LogLevel.values)


def worker_list(
    *,
    service: Service | None = None,
    running_only: bool = False,
    readable: frozenset[str] | None = None,
) -> QuerySet[Worker]:
    """Workers with their service and deployment, by service then name; `running_only`
    leaves out the stopped and dead ones; `readable` keeps those of these services."""
    workers = Worker.objects.select_related("service", "deployment").order_by(
        "service__name", "name"
    )
    if readable is not None:
        workers = workers.filter(service__name__in=readable)
    if running_only:
        workers = workers.exclude(state__in=Worker.FINISHED_STATES)
    return workers if service is None else workers.filter(service=service)


def worker_get_by_credential(*, credential: str) -> Worker | None:
    """The worker whose credential `credential` is (any state), with its service."""
    return (
        Worker.objects.select_related("service", "deployment")
        .filter(credential_hash=secret_hash(credential))
        .first()
    )


@dataclass(frozen=True)
class LogCursor:
    """Lines after `(ts, pk)` in time order, plus lines with an id above `high_water`
    (None: a plain start time, nothing counts as late)."""

    ts: datetime
    pk: int = 0
    high_water: int | None = None

    def encode(self) -> str:
        return f"c{(self.ts - EPOCH) // _MICROSECOND}.{self.pk}.{self.high_water or 0}"


@dataclass(frozen=True)
class LogPage:
    lines: list[WorkerLogLine]
    next_since: str
    # More lines are there already: ask again with next_since at once.
    more: bool


def worker_get(*, name: str, service: Service | None = None) -> Worker:
    """The worker called `name` (of `service`, if given); DomainError 404 when there is
    none."""
    workers = Worker.objects.filter(name=name)
    worker = (workers if service is None else workers.filter(service=service)).first()
    if worker is None:
        where = "" if service is None else f" in service {service.name!r}"
        raise DomainError(
            f"no worker named {name!r}{where}; list them with GET /api/v1/workers",
            status=404,
            details={"name": name},
        )
    return worker


def log_time_parse(*, raw: str, field: str) -> datetime:
    """Epoch seconds or ISO 8601 (UTC unless it says otherwise); 422 naming `field`."""
    try:
        return datetime.fromtimestamp(float(raw), tz=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise DomainError(
            f"{field}: {raw!r} is not a time; use ISO 8601 (2024-05-01T12:00:00Z), epoch "
            "seconds, or a next_since cursor",
            status=422,
            details={"fields": {field: ["ISO 8601, epoch seconds, or a cursor"]}},
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def log_cursor_parse(*, raw: str) -> LogCursor:
    """A `next_since` cursor, or a start time (epoch seconds or ISO 8601)."""
    match = _CURSOR.fullmatch(raw)
    if match is None:
        return LogCursor(ts=log_time_parse(raw=raw, field="since"))
    micros, pk, high_water = (int(part) for part in match.groups())
    return LogCursor(ts=EPOCH + micros * _MICROSECOND, pk=pk, high_water=high_water)


def worker_log_page(
    *,
    worker: Worker | None = None,
    service: Service | None = None,
    since: str | None = None,
    until: str | None = None,
    request_id: str | None = None,
    level: str | None = None,
    text: str | None = None,
    limit: int = LOG_DEFAULT_LIMIT,
) -> LogPage:
    """`limit` lines of `worker` or of `service` (or of both: that worker within that
    service), each naming its worker as `worker_name`, oldest first. Without `since`, the
    newest `limit` lines; with it, those after it (see the module docstring). `text`
    keeps the lines whose message or event contains it (any case). At most three queries."""
    if worker is None and service is None:
        raise ValueError("pass a worker, a service, or both")
    lines = _filtered(
        worker=worker, service=service, until=until, request_id=request_id, level=level
    )
    if text:
        lines = lines.filter(Q(message__icontains=text) | Q(event__icontains=text))
    # Read first: ids at or below it are in this page or were seen; above, next time.
    high_water = WorkerLogLine.objects.aggregate(top=Max("pk"))["top"] or 0
    lines = lines.filter(pk__lte=high_water)
    if since is None:
        page = list(lines.order_by("-ts", "-pk")[:limit])[::-1]
        position = LogCursor(ts=page[-1].ts, pk=page[-1].pk) if page else LogCursor(ts=EPOCH)
        return LogPage(page, _next(position, high_water), more=False)

    cursor = log_cursor_parse(raw=since)
    after = Q(ts__gt=cursor.ts) | Q(ts=cursor.ts, pk__gt=cursor.pk)
    late: list[WorkerLogLine] = []
    if cursor.high_water is not None:
        late = list(lines.filter(~after, pk__gt=cursor.high_water).order_by("pk")[: limit + 1])
        if len(late) > limit:
            # Even the late lines fill the page: the rest of them come next, by id.
            page = late[:limit]
            return LogPage(page, _next(cursor, page[-1].pk), more=True)
    on_time = list(lines.filter(after).order_by("ts", "pk")[: limit - len(late) + 1])
    more = len(late) + len(on_time) > limit
    on_time = on_time[: limit - len(late)]
    position = LogCursor(ts=on_time[-1].ts, pk=on_time[-1].pk) if on_time else cursor
    return LogPage(late + on_time, _next(position, high_water), more=more)


def _filtered(
    *,
    worker: Worker | None,
    service: Service | None,
    until: str | None,
    request_id: str | None,
    level: str | None,
) -> QuerySet[WorkerLogLine]:
    lines = WorkerLogLine.objects.annotate(worker_name=F("worker__name"))
    if worker is not None:
        lines = lines.filter(worker=worker)
    if service is not None:
        lines = lines.filter(service=service)
    if until is not None:
        lines = lines.filter(ts__lt=log_time_parse(raw=until, field="until"))
    if request_id:
        lines = lines.filter(request_id=request_id)
    if level:
        lines = lines.filter(level__in=_LEVELS[_LEVELS.index(level) :])
    return lines


def _next(position: LogCursor, high_water: int) -> str:
    return LogCursor(ts=position.ts, pk=position.pk, high_water=high_water).encode()
