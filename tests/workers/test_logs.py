"""Worker logs in the database: ingest, retention by count and by age, and the pages that
read them (filters, the cursor, late lines, the merged service view)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from apps.common.errors import DomainError
from apps.services.models import Service
from apps.workers.models import Worker, WorkerLogLine
from apps.workers.selectors import LogCursor, LogPage, log_cursor_parse, worker_log_page
from apps.workers.services import LogLineData, worker_create, worker_log_ingest, worker_logs_prune
from apps.workers.tasks import prune_worker_logs

pytestmark = pytest.mark.django_db

T0 = datetime.fromisoformat("2026-03-01T12:00:00+00:00")
DAY = timedelta(days=1)


def line(second: float, message: str = "", **fields: Any) -> LogLineData:
    return LogLineData(
        ts=T0 + timedelta(seconds=second),
        level=fields.pop("level", "info"),
        event=fields.pop("event", "log"),
        request_id=fields.pop("request_id", ""),
        message=message or f"at {second}",
        fields=fields,
    )


def ingest(worker: Worker, *seconds: float, **fields: Any) -> None:
    lines = [line(s, **dict(fields)) for s in seconds]
    worker_log_ingest(worker=worker, lines=lines, now=T0 + timedelta(seconds=max(seconds)))


def messages(page: LogPage) -> list[str]:
    return [line.message for line in page.lines]


@pytest.fixture(autouse=True)
def no_prune_on_ingest(settings: Any) -> None:
    """Ingest prunes when the global line id passes a mark: off unless a test sets it."""
    settings.MEMRUN_LOG_PRUNE_EVERY_LINES = 10**15


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    return service_factory()


@pytest.fixture
def worker(service: Service) -> Worker:
    return worker_create(service=service, name=f"{service.name}-a")[0]


@pytest.fixture
def other(service: Service) -> Worker:
    return worker_create(service=service, name=f"{service.name}-b")[0]


def test_ingest_is_one_insert_and_keeps_what_the_worker_sent(
    worker: Worker, django_assert_num_queries: Any
) -> None:
    lines = [
        line(1, "hello", request_id="r1", event="request", level="error", status="failed"),
        line(2, "x" * 20_000),
    ]
    received = T0 + DAY
    # savepoint, INSERT, release
    with django_assert_num_queries(3):
        assert worker_log_ingest(worker=worker, lines=lines, now=received) == 2

    first, long = WorkerLogLine.objects.filter(worker=worker).order_by("ts")
    assert (first.service_id, first.ts, first.received_at) == (
        worker.service_id,
        T0 + timedelta(seconds=1),
        received,
    )
    assert (first.level, first.event, first.request_id) == ("error", "request", "r1")
    assert first.fields == {"status": "failed"}
    # Cut to the bound, saying by how much.
    assert long.message == "x" * 8165 + "... [11835 more characters]"
    assert len(long.message) == WorkerLogLine.MESSAGE_MAX_CHARS


def test_a_batch_over_the_line_limit_is_413(worker: Worker) -> None:
    with pytest.raises(DomainError) as exc:
        worker_log_ingest(worker=worker, lines=[line(0)] * 1001)
    assert exc.value.status == 413
    assert not WorkerLogLine.objects.filter(worker=worker).exists()


def test_ingest_prunes_its_worker_to_the_count_bound(
    settings: Any, worker: Worker, other: Worker
) -> None:
    settings.MEMRUN_LOG_MAX_LINES_PER_WORKER = 5
    ingest(other, *range(8))
    settings.MEMRUN_LOG_PRUNE_EVERY_LINES = 1  # every batch passes the mark
    ingest(worker, 0, 1, 2, 3)
    ingest(worker, 4, 5, 6, 7)

    kept = WorkerLogLine.objects.filter(worker=worker).order_by("ts")
    assert [line.message for line in kept] == [f"at {s}" for s in (3, 4, 5, 6, 7)]
    # Only the posting worker is pruned on ingest.
    assert WorkerLogLine.objects.filter(worker=other).count() == 8


def test_prune_by_age_follows_the_given_clock(settings: Any, worker: Worker) -> None:
    settings.MEMRUN_LOG_RETENTION_S = 7 * 24 * 3600
    ingest(worker, 0, DAY.total_seconds(), 3 * DAY.total_seconds())

    assert worker_logs_prune(worker=worker, now=T0 + 7 * DAY) == 0
    assert worker_logs_prune(worker=worker, now=T0 + 8.5 * DAY) == 2
    assert [line.ts for line in WorkerLogLine.objects.filter(worker=worker)] == [T0 + 3 * DAY]


def test_prune_by_count_keeps_the_newest_even_on_equal_timestamps(
    settings: Any, worker: Worker
) -> None:
    settings.MEMRUN_LOG_MAX_LINES_PER_WORKER = 3
    ingest(worker, 1, 1, 1, 1, 2)
    newest = list(WorkerLogLine.objects.filter(worker=worker).order_by("-pk"))[:3]
    assert worker_logs_prune(worker=worker, now=T0) == 2
    assert list(WorkerLogLine.objects.filter(worker=worker).order_by("-pk")) == newest


def test_the_beat_task_sweeps_every_worker_in_two_queries_each(
    settings: Any, worker: Worker, other: Worker, django_assert_max_num_queries: Any
) -> None:
    settings.MEMRUN_LOG_MAX_LINES_PER_WORKER = 2
    settings.MEMRUN_LOG_RETENTION_S = 10 * 365 * 24 * 3600  # T0 is in the past
    ingest(worker, 0, 1, 2, 3)
    ingest(other, 0, 1, 2)
    workers = Worker.objects.count()
    with django_assert_max_num_queries(1 + 2 * workers):
        assert prune_worker_logs() == 3
    assert WorkerLogLine.objects.filter(worker__in=[worker, other]).count() == 4


def test_the_tail_is_the_newest_lines_oldest_first(worker: Worker) -> None:
    ingest(worker, 3, 1, 2, 5, 4)
    page = worker_log_page(worker=worker, limit=3)
    assert messages(page) == ["at 3", "at 4", "at 5"]
    assert not page.more


def test_paging_from_a_time_walks_every_line_once(worker: Worker, other: Worker) -> None:
    ingest(worker, *range(10))
    ingest(other, 100)
    since: str | None = T0.isoformat()
    seen: list[str] = []
    pages = 0
    while True:
        page = worker_log_page(worker=worker, since=since, limit=4)
        seen += messages(page)
        since, pages = page.next_since, pages + 1
        if not page.more:
            break
    assert seen == [f"at {s}" for s in range(10)]
    assert pages == 3
    assert worker_log_page(worker=worker, since=since).lines == []


def test_since_accepts_epoch_seconds_and_iso(worker: Worker) -> None:
    ingest(worker, 0, 10, 20)
    epoch = str((T0 + timedelta(seconds=10)).timestamp())
    assert messages(worker_log_page(worker=worker, since=epoch)) == ["at 10", "at 20"]
    naive = (T0 + timedelta(seconds=10)).replace(tzinfo=None).isoformat()
    assert messages(worker_log_page(worker=worker, since=naive)) == ["at 10", "at 20"]
    with pytest.raises(DomainError) as exc:
        worker_log_page(worker=worker, since="yesterday")
    assert exc.value.status == 422
    assert exc.value.details["fields"].keys() == {"since"}


def test_filters_request_id_level_and_until(worker: Worker) -> None:
    worker_log_ingest(
        worker=worker,
        lines=[
            line(1, "a", request_id="r1", level="debug"),
            line(2, "b", request_id="r1", level="warning"),
            line(3, "c", request_id="r2", level="error"),
            line(4, "d", level="critical"),
        ],
    )
    assert messages(worker_log_page(worker=worker, request_id="r1")) == ["a", "b"]
    assert messages(worker_log_page(worker=worker, level="error")) == ["c", "d"]
    assert messages(worker_log_page(worker=worker, level="warning", request_id="r1")) == ["b"]
    until = (T0 + timedelta(seconds=3)).isoformat()
    assert messages(worker_log_page(worker=worker, until=until)) == ["a", "b"]


def test_the_service_view_merges_workers_in_time_order(
    service: Service, worker: Worker, other: Worker, service_factory: Callable[..., Service]
) -> None:
    elsewhere = worker_create(service=service_factory(), name=f"{service.name}-z")[0]
    ingest(worker, 1, 3)
    ingest(other, 2, 4)
    ingest(elsewhere, 2.5)
    page = worker_log_page(service=service)
    assert messages(page) == ["at 1", "at 2", "at 3", "at 4"]
    assert [line.worker_name for line in page.lines] == [  # type: ignore[attr-defined]
        worker.name,
        other.name,
        worker.name,
        other.name,
    ]


def test_following_catches_lines_that_arrive_late(
    service: Service, worker: Worker, other: Worker
) -> None:
    ingest(worker, 10, 11, 12)
    follow = worker_log_page(service=service)
    assert messages(follow) == ["at 10", "at 11", "at 12"]

    # `other` ships its batch after `worker`'s later lines were read, then `worker` goes on.
    ingest(other, 9.5, 11.5)
    ingest(worker, 13)
    follow = worker_log_page(service=service, since=follow.next_since)
    assert messages(follow) == ["at 9.5", "at 11.5", "at 13"]
    assert worker_log_page(service=service, since=follow.next_since).lines == []


def test_late_lines_beyond_one_page_come_over_several(service: Service, worker: Worker) -> None:
    ingest(worker, 100)
    follow = worker_log_page(service=service)
    ingest(worker, *range(7))  # a worker that was cut off sends its backlog
    ingest(worker, 101)
    seen: list[str] = []
    for _ in range(5):
        follow = worker_log_page(service=service, since=follow.next_since, limit=3)
        seen += messages(follow)
    assert seen == [f"at {s}" for s in (*range(7), 101)]


def test_the_cursor_round_trips_to_the_microsecond() -> None:
    cursor = LogCursor(ts=T0 + timedelta(microseconds=123_457), pk=42, high_water=99)
    assert log_cursor_parse(raw=cursor.encode()) == cursor


def test_beat_runs_the_sweep() -> None:
    from memrun_site.celery import app

    entry = app.conf.beat_schedule["prune_worker_logs"]
    assert entry["task"] == prune_worker_logs.name
    assert app.tasks[prune_worker_logs.name] is not None
