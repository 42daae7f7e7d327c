"""`memrun dlq` against a live control plane, real Kafka and real workers: list a failed
request, show it, replay it after a fix and see it succeed; an unknown id is one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from memrun import Client
from tests.api.test_dead_letters_api import start
from tests.memrun.cli import cli_point_at, memrun_lines
from tests.worker_daemon.harness import WorkerProcess, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["start"]


@pytest.fixture
def service(
    live_server: Any,
    api_token: tuple[Any, str],
    service_name: Callable[[], str],
    deploy_settings: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    from apps.services.services import service_create

    cli_point_at(live_server, api_token, monkeypatch)
    service = service_create(name=service_name(), partitions=1)
    deploy_settings(service, status="active", sticky_key="user")
    return service.name


def test_list_show_and_replay_after_a_fix(
    service: str, start: Callable[[str, str], WorkerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = start(service, "picky_v1.py")
    failed = Client().invoke_request(service, {"user": "bad"}, wait=30, queue=True)
    assert failed.ok is False

    def listed() -> list[str]:
        return memrun_lines(capsys, "dlq", service)[1]

    lines = wait_for(lambda: len(listed_lines := listed()) == 2 and listed_lines, what="a row")
    assert lines[0].split()[:2] == ["ID", "FAILED"]
    letter_id = lines[1].split()[0]
    assert "bad" in lines[1] and "ValueError: cannot serve bad" in lines[1]

    code, shown, _ = memrun_lines(capsys, "dlq", service, "--show", letter_id)
    assert code == 0 and f"request_id: {failed.request_id}" in shown
    assert any(line.startswith("Traceback") for line in shown)

    v1.terminate()
    assert v1.wait() == 0
    start(service, "picky_v2.py")
    code, out, _ = memrun_lines(capsys, "dlq", service, "--replay", letter_id, "--wait", "30")
    assert code == 0, out
    [line] = out
    assert line.startswith(f"replayed {letter_id} as request ") and "(attempt 2): ok" in line
    assert '"version": 2' in line


def test_an_unknown_id_is_one_clear_line(service: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert memrun_lines(capsys, "dlq", service)[1] == [f"{service} has no dead letters"]
    code, out, err = memrun_lines(capsys, "dlq", service, "--replay", "0-77")
    assert code == 1 and out == []
    assert err.startswith("memrun: error: ") and "no dead letter '0-77'" in err
    assert len(err.splitlines()) == 1
