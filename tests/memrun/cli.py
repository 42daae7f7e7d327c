"""What the CLI tests share: the CLI pointed at a live control plane, run in-process
with its output captured, and a handler to deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memrun.cli import main
from tests.api.test_deployments_api import handler_source


def cli_point_at(
    live_server: Any, api_token: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the CLI (and `memrun.Client()`) at the live server with the test user's token."""
    monkeypatch.setenv("MEMRUN_URL", live_server.url)
    monkeypatch.setenv("MEMRUN_TOKEN", api_token[1])


@pytest.fixture
def control_plane(
    live_server: Any,
    api_token: tuple[Any, str],
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> list[int]:
    """The CLI pointed at a live server with its own MEMRUN_HOME and artifact folder.
    Returns the service ids whose rollout was started (provisioning's task, recorded
    here instead of queued on the shared broker)."""
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    cli_point_at(live_server, api_token, monkeypatch)
    started: list[int] = []

    class ReconcileService:
        @staticmethod
        def delay(service_id: int) -> None:
            started.append(service_id)

    import apps.provisioning.tasks

    monkeypatch.setattr(apps.provisioning.tasks, "reconcile_service", ReconcileService)
    return started


def write_handler(tmp_path: Path, name: str, **source: str) -> Path:
    handler = tmp_path / "handler.py"
    handler.write_text(handler_source(name, **source))
    return handler


def memrun(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`memrun ARGS` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def memrun_lines(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    """`memrun ARGS` in this process: (exit code, stdout's lines, stderr)."""
    code, out, err = memrun(capsys, *args)
    return code, out.splitlines(), err
