"""`memrun logs` against a live control plane: the newest lines, filters, `--since`,
following with `-f` until Ctrl-C, and a refusal as one line on stderr."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.services.models import Service
from apps.workers.models import Worker
from apps.workers.services import LogLineData, worker_create, worker_log_ingest
from memrun.cli import build_parser
from memrun.cli.logs import format_line, parse_since, run
from tests.memrun.cli import cli_point_at, memrun_lines

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def service(
    live_server: Any,
    api_token: tuple[Any, str],
    service_name: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> Service:
    from apps.services.services import service_create

    cli_point_at(live_server, api_token, monkeypatch)
    return service_create(name=service_name(), partitions=1)


@pytest.fixture
def workers(service: Service) -> tuple[Worker, Worker]:
    first = worker_create(service=service, name=f"{service.name}-a")[0]
    second = worker_create(service=service, name=f"{service.name}-b")[0]
    return first, second


def ingest(worker: Worker, at: datetime, message: str, **fields: Any) -> None:
    line = LogLineData(
        ts=at,
        level=fields.pop("level", "info"),
        event=fields.pop("event", "log"),
        request_id=fields.pop("request_id", ""),
        message=message,
        fields=fields,
    )
    worker_log_ingest(worker=worker, lines=[line])


def test_logs_prints_the_merged_lines_and_filters(
    service: Service, workers: tuple[Worker, Worker], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = workers
    now = timezone.now()
    ingest(a, now - timedelta(hours=2), "long ago")
    ingest(a, now - timedelta(seconds=3), "first", request_id="r1")
    ingest(b, now - timedelta(seconds=2), "", event="request", request_id="r2", status="ok")
    ingest(a, now - timedelta(seconds=1), "third", level="error")

    code, out, err = memrun_lines(capsys, "logs", service.name)
    assert (code, err) == (0, "")
    assert [line.split()[1:4] for line in out] == [
        [a.name, "info", "log"],
        [a.name, "info", "log"],
        [b.name, "info", "request"],
        [a.name, "error", "log"],
    ]
    assert out[1].endswith("log first request_id=r1")
    assert out[2].endswith("request request_id=r2 status=ok")

    recent = memrun_lines(capsys, "logs", service.name, "--since", "10m")[1]
    assert len(recent) == 3 and "long ago" not in "\n".join(recent)
    assert len(memrun_lines(capsys, "logs", service.name, "--worker", b.name)[1]) == 1
    assert "third" in memrun_lines(capsys, "logs", service.name, "--level", "warning")[1][0]
    assert len(memrun_lines(capsys, "logs", service.name, "--request-id", "r1")[1]) == 1
    assert memrun_lines(capsys, "logs", service.name, "-n", "1")[1][0].endswith("third")


def test_follow_prints_new_lines_until_ctrl_c(
    service: Service, workers: tuple[Worker, Worker], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = workers
    now = timezone.now()
    ingest(a, now, "before")
    polls: list[float] = []

    def wait(interval_s: float) -> None:
        """Between polls: lines arrive, a late one from `b` among them; then Ctrl-C."""
        polls.append(interval_s)
        if len(polls) == 1:
            ingest(a, now + timedelta(seconds=2), "after")
            ingest(b, now - timedelta(seconds=1), "late from b")
        elif len(polls) == 3:
            raise KeyboardInterrupt

    args = build_parser().parse_args(["logs", service.name, "-f"])
    assert run(args, wait=wait) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(maxsplit=4)[-1] for line in out] == ["before", "late from b", "after"]
    assert polls == [1.0, 1.0, 1.0]


def test_errors_are_one_line(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = memrun_lines(capsys, "logs", "no-such-service")
    assert (code, out) == (1, [])
    assert err.startswith("memrun: error: no service named 'no-such-service'")
    assert len(err.splitlines()) == 1
    code, _, err = memrun_lines(capsys, "logs", service.name, "--worker", "nobody")
    assert code == 1 and "no worker named 'nobody'" in err
    code, _, err = memrun_lines(capsys, "logs", service.name, "--since", "last tuesday")
    assert code == 1 and "since" in err


def test_since_and_the_line_format() -> None:
    assert parse_since("10m", now=1000.0) == "400.000000"
    assert parse_since("1.5h", now=10_000.0) == "4600.000000"
    assert parse_since("2024-05-01T12:00Z") == "2024-05-01T12:00Z"
    line = {
        "ts": "2024-05-01T12:00:00.123456+00:00",
        "worker": "w1",
        "level": "error",
        "event": "log",
        "request_id": "",
        "message": "boom",
        "fields": {"logger": "memrun.service.s", "traceback": "Traceback\n  ValueError"},
    }
    assert format_line(line) == (
        "2024-05-01T12:00:00.123Z w1 error   log boom\n    Traceback\n      ValueError"
    )
