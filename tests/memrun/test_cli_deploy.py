"""The deploy path of the CLI against a live control plane: `memrun deploy` packages,
uploads and follows the rollout; `status`, `rollback` and `invoke` format what the API
says; a bad flag or a refusal is one line on stderr and exit 1."""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from apps.services.models import Deployment, Service
from memrun import Client
from memrun.cli.deploy import POLL_INTERVAL_S
from memrun.errors import ApiError
from tests.memrun.cli import control_plane, memrun, write_handler

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["control_plane"]


def test_deploy_no_wait_uploads_and_prints_the_version(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    handler = write_handler(tmp_path, name)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("X = 1\n")

    code, out, err = memrun(
        capsys,
        "deploy",
        str(handler),
        "--include",
        str(tmp_path / "lib"),
        "--memory",
        "3Gi",
        "-m",
        "first",
        "--no-wait",
    )
    assert code == 0, err
    assert f"packaged handler.py (+1 file) as {name}" in out
    assert f"{name} version 1" in out
    assert err.strip() == "warning: memory: --memory '3Gi' overrides '1Gi' from handler.py"
    deployment = Deployment.objects.get(service__name=name)
    assert (deployment.version, deployment.message) == (1, "first")
    assert f"sha256 {deployment.sha256[:12]}" in out
    assert Service.objects.get(name=name).config.memory_bytes == 3 * 2**30
    assert control_plane == [deployment.service_id]

    code, out, _ = memrun(capsys, "deploy", str(handler), "--no-wait")
    assert (code, f"{name} version 2" in out) == (0, True)


@contextlib.contextmanager
def provisioning(name: str, version: int, *updates: dict[str, str]) -> Iterator[None]:
    """What provisioning records while a rollout goes on: once version `version` of
    `name` exists, apply each of `updates` to it, a poll interval apart."""

    def provision() -> None:
        deadline = time.monotonic() + 30
        deployments = Deployment.objects.filter(service__name=name, version=version)
        try:
            while not deployments.exists():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.05)
            for update in updates:
                time.sleep(POLL_INTERVAL_S * 1.2)
                deployments.update(**update)
        finally:
            connection.close()  # this thread's own; the test database is dropped after

    provisioner = threading.Thread(target=provision)
    provisioner.start()
    try:
        yield
    finally:
        provisioner.join()


def test_deploy_follows_the_rollout_until_it_is_live(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    with provisioning(name, 1, {"status": "rolling"}, {"status": "active"}):
        code, out, err = memrun(capsys, "deploy", str(write_handler(tmp_path, name)))
    assert code == 0, err
    lines = out.splitlines()
    assert "rolling out v1: pending, workers ready 0/1" in lines
    assert "rolling out v1: rolling, workers ready 0/1" in lines
    assert lines[-1] == (f"done: {name} v1 is live at {Client().url}/api/v1/services/{name}/invoke")


def test_a_failed_rollout_exits_1_with_the_reason(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    memrun(capsys, "deploy", str(write_handler(tmp_path, name)), "--no-wait")
    failed = {"status": "failed", "failure_reason": "ModuleNotFoundError: numpy"}
    with provisioning(name, 2, failed):
        code, out, err = memrun(capsys, "rollback", name, "--to", "1")
    assert code == 1
    assert out.startswith(f"{name} version 2: rollback to v1")
    assert err == f"memrun: error: {name} v2 failed to roll out: ModuleNotFoundError: numpy\n"


def test_status_and_rollback(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    memrun(capsys, "deploy", str(write_handler(tmp_path, name)), "--no-wait", "-m", "one")
    memrun(capsys, "deploy", str(write_handler(tmp_path, name, memory="2Gi")), "--no-wait")
    deployments = Deployment.objects.filter(service__name=name)
    deployments.filter(version=1).update(status="superseded")
    deployments.filter(version=2).update(status="active")

    code, out, _ = memrun(capsys, "status")
    assert code == 0
    header, row = out.splitlines()[0], next(line for line in out.splitlines() if name in line)
    assert header.split() == ["SERVICE", "LIVE", "WORKERS", "AUTOSCALE", "LAST", "DEPLOYMENT"]
    assert row.split()[:6] == [name, "v2", "0/1", "off", "v2", "active"]
    assert re.fullmatch(r"\d+s", row.split()[6])  # seconds ago (how many is the machine's load)

    code, out, err = memrun(capsys, "rollback", name, "--no-wait")
    assert code == 0, err
    assert out.startswith(f"{name} version 3: rollback to v1 (sha256 ")
    v1, v3 = deployments.get(version=1), deployments.get(version=3)
    assert v3.sha256 == v1.sha256

    code, out, _ = memrun(capsys, "status", name)
    history = [line.split()[:2] for line in out.splitlines()[3:]]
    assert history == [
        ["VERSION", "STATUS"],
        ["v3", "pending"],
        ["v2", "active"],
        ["v1", "superseded"],
    ]
    assert "one" in out.splitlines()[-1]


def test_status_and_the_api_show_a_degraded_version(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apps.services.services import deployment_set_degraded

    name = service_name()
    memrun(capsys, "deploy", str(write_handler(tmp_path, name)), "--no-wait")
    deployment = Deployment.objects.get(service__name=name)
    Deployment.objects.filter(pk=deployment.pk).update(status="active")
    deployment_set_degraded(
        deployment=deployment,
        degraded_reason="3 workers of v1 died within 900 s\n\nlog tail:\nValueError: boom",
        actor="reconcile",
        reason="degraded",
    )

    code, out, _ = memrun(capsys, "status")
    row = next(line for line in out.splitlines() if name in line)
    assert code == 0 and row.split()[:3] == [name, "v1", "DEGRADED"]
    assert row.endswith("DEGRADED: 3 workers of v1 died within 900 s")
    code, out, _ = memrun(capsys, "status", name)
    assert "v1 is DEGRADED: 3 workers of v1 died" in out and "ValueError: boom" in out

    from memrun import Client

    [listed] = Client().deployments(name, limit=1)
    assert listed.degraded and "ValueError: boom" in listed.degraded_reason


def test_the_client_reports_upload_progress(
    control_plane: list[int], service_name: Callable[[], str], tmp_path: Path
) -> None:
    from memrun.packaging import build_package

    name = service_name()
    handler = write_handler(tmp_path, name)
    (tmp_path / "blob.bin").write_bytes(random.Random(1).randbytes(300_000))
    package = tmp_path / "package.tar.gz"
    info = build_package(handler, includes=[tmp_path / "blob.bin"], out=package)
    progress: list[tuple[int, int]] = []
    deployment = Client().deploy(name, package, progress=lambda s, t: progress.append((s, t)))
    assert deployment.sha256 == info.sha256
    assert len(progress) > 1
    assert progress[-1] == (info.size_bytes, info.size_bytes)
    assert [sent for sent, _ in progress] == sorted(sent for sent, _ in progress)


def test_a_refusal_from_the_server_is_one_line(
    control_plane: list[int],
    service_factory: Callable[..., Service],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = service_factory(partitions=1)
    code, _, err = memrun(capsys, "deploy", str(write_handler(tmp_path, service.name)))
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("memrun: error: max_workers (2) cannot exceed the 1 partitions")


def test_an_upload_over_the_servers_cap_is_a_clear_error(
    control_plane: list[int], settings: Any, service_name: Callable[[], str], tmp_path: Path
) -> None:
    from memrun.packaging import build_package

    settings.MEMRUN_PACKAGE_MAX_BYTES = 4096
    name = service_name()
    (tmp_path / "blob.bin").write_bytes(random.Random(2).randbytes(2_000_000))
    package = tmp_path / "package.tar.gz"
    build_package(write_handler(tmp_path, name), includes=[tmp_path / "blob.bin"], out=package)
    with pytest.raises(ApiError) as refused:
        Client().deploy(name, package)
    assert "4096" in refused.value.message or "size limit" in refused.value.message


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--max-workers", "many"], "--max-workers takes a whole number, got 'many'"),
        (["--memory", "32Qi"], "memory: '32Qi' is not a size"),
        (["--min-workers", "5", "--max-workers", "2"], "min_workers (5) cannot exceed"),
        (["--sticky-key", "user-id"], "sticky"),
        (["--include", "no/such/path"], "include no/such/path does not exist"),
        (["--name", "Bad Name"], "service name 'Bad Name' is not valid"),
    ],
)
def test_bad_flags_are_one_clear_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str
) -> None:
    handler = write_handler(tmp_path, "flags-demo")
    code, out, err = memrun(capsys, "deploy", str(handler), "--no-wait", *flags)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("memrun: error: "), err
    assert says in err


def test_a_missing_handler_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = memrun(capsys, "deploy", str(tmp_path / "nope.py"))
    assert (code, err) == (
        1,
        f"memrun: error: {tmp_path / 'nope.py'} must be an existing .py file\n",
    )


def test_an_unreachable_control_plane_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMRUN_URL", "http://127.0.0.1:1")
    code, _, err = memrun(capsys, "deploy", str(write_handler(tmp_path, "flags-demo")))
    assert code == 1
    assert err.startswith("memrun: error: cannot reach memrun at http://127.0.0.1:1")


def test_invoke_prints_the_request_id_when_async_or_timed_out(
    control_plane: list[int],
    service_factory: Callable[..., Service],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_factory().name
    code, _, err = memrun(capsys, "invoke", name, '{"n": 1}')
    assert code == 1 and "never been deployed" in err
    code, out, _ = memrun(capsys, "invoke", name, '{"n": 1}', "--async", "--queue")
    assert code == 0 and len(out.strip()) >= 16
    code, out, err = memrun(capsys, "invoke", name, '{"n": 1}', "--wait", "0", "--queue")
    assert code == 3
    assert out.strip() in err
    code, _, err = memrun(capsys, "invoke", name, "{not json")
    assert code == 1 and err.startswith("memrun: error: the payload is not valid JSON")
