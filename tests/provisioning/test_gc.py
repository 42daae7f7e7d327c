"""Garbage collection through `memrun gc` against a live server: packages of a deleted
service and of versions beyond the retention count go (never the live one, one a worker
runs, nor one a kept version shares), stopped local workers' folders and half-built venvs
go; what it prints is what left the disk and the S3 server."""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from apps.provisioning.local_layout import LocalLayout, write_json_atomic
from apps.services.artifacts import artifact_open
from apps.services.models import Deployment, Service
from apps.services.services import service_delete
from apps.workers.models import Worker
from apps.workers.services import worker_create, worker_heartbeat
from memrun.cli import main
from tests.api.test_deployments_api import build, upload

pytestmark = pytest.mark.django_db(transaction=True)

VENV_KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture(params=["folder", "s3"])
def store_bytes(
    request: pytest.FixtureRequest,
    settings: Any,
    tmp_path: Path,
    unique_name: str,
    live_server: Any,
    api_token: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[], int]]:
    """The CLI pointed at a live server; MEMRUN_HOME in tmp_path; the artifacts in a folder
    or under a fresh S3 prefix. Yields `store_bytes() -> bytes stored`, measured on its own."""
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    settings.MEMRUN_GC_KEEP_VERSIONS = 2
    settings.MEMRUN_GC_MIN_AGE_S = 0
    monkeypatch.setenv("MEMRUN_URL", live_server.url)
    monkeypatch.setenv("MEMRUN_TOKEN", api_token[1])
    if request.param == "folder":
        root = tmp_path / "artifacts"
        settings.MEMRUN_ARTIFACTS_URL = root.as_uri()
        yield lambda: sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return
    s3_settings = request.getfixturevalue("s3_settings")
    s3 = request.getfixturevalue("s3_client")
    prefix = f"test-gc/{unique_name}"
    settings.MEMRUN_ARTIFACTS_URL = f"s3://{s3_settings.bucket}/{prefix}"

    def listed() -> list[dict[str, Any]]:
        found = s3.list_objects_v2(Bucket=s3_settings.bucket, Prefix=prefix + "/")
        return list(found.get("Contents", []))

    yield lambda: sum(item["Size"] for item in listed())
    for item in listed():
        s3.delete_object(Bucket=s3_settings.bucket, Key=item["Key"])


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def deploy(api_client: Client, name: str, data: bytes) -> Deployment:
    response = upload(api_client, name, data)
    assert response.status_code == 201, response.json()
    return Deployment.objects.get(pk=response.json()["id"])


def gc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, tuple[int, int]], int]:
    """Run `memrun gc`: ({kind: (count, bytes)}, total bytes), as it printed them."""
    assert main(["gc", *args]) == 0
    out = capsys.readouterr().out
    kinds = {
        match[1]: (int(match[2]), int(match[3]))
        for match in re.finditer(r"^(\w+) +(\d+) .*\((\d+) bytes\)$", out, re.M)
    }
    [total] = re.findall(r"^(?:freed|would free) .*\((\d+) bytes\)$", out, re.M)
    return kinds, int(total)


def test_memrun_gc_frees_what_it_says_and_never_the_live_version(
    api_client: Client,
    service_name: Callable[[], str],
    store_bytes: Callable[[], int],
    settings: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    packages = [build(tmp_path, name, body=f"return {n}") for n in range(4)]
    # v1..v4 distinct, v5 repeats v3 (a rollback): v3's package is shared with the live v5.
    v1, v2, v3, v4, v5 = (deploy(api_client, name, p) for p in [*packages, packages[2]])
    Deployment.objects.filter(service__name=name).update(status="superseded")
    Deployment.objects.filter(pk=v5.pk).update(status="active")
    service = Service.objects.get(name=name)
    # A worker still runs v2, beyond the retention count: its package stays.
    runner, _ = worker_create(service=service, deployment=v2, name=f"{name}-runner")
    worker_heartbeat(worker=runner, state="ready", stats={})
    # A deleted service's package goes.
    gone_name = service_name()
    gone = deploy(api_client, gone_name, build(tmp_path, gone_name))
    service_delete(service=Service.objects.get(name=gone_name))

    home = Path(settings.MEMRUN_HOME)
    layout = LocalLayout(home)
    stopped = layout.worker_dir(f"{name}-stopped")
    (stopped / "cache").mkdir(parents=True)
    (stopped / "worker.log").write_bytes(b"x" * 1000)
    (stopped / "cache" / "blob").write_bytes(b"y" * 5000)
    live = layout.worker_dir(f"{name}-live")
    write_json_atomic(
        layout.spec_path(f"{name}-live"), {"name": f"{name}-live", "argv": [], "env": {}}
    )
    venvs = live / "work" / "venvs"
    (venvs / VENV_KEY).mkdir(parents=True)
    (venvs / VENV_KEY / "memrun-venv.json").write_text(json.dumps({"key": VENV_KEY}))
    (venvs / f".{VENV_KEY}-killed").mkdir()
    (venvs / f".{VENV_KEY}-killed" / "half").write_bytes(b"z" * 3000)
    (live / "worker.log").write_bytes(b"l" * 700)
    # A build in progress holds its key's lock: its staging folder stays.
    building_key = "f" * 32
    (venvs / f".{building_key}-building").mkdir()
    (venvs / f".{building_key}-building" / "half").write_bytes(b"b" * 100)
    lock = (venvs / f".{building_key}.lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    # A worker the database says is running keeps its folder, spec or not.
    running = layout.worker_dir(runner.name)
    running.mkdir(parents=True)
    (running / "worker.log").write_bytes(b"r" * 300)

    def measured() -> int:
        return store_bytes() + disk_bytes(home / "workers")

    expected = {
        "artifacts": (2, v1.size_bytes + gone.size_bytes),
        "worker_folders": (1, 6000),
        "venvs": (1, 3000),
    }
    before = measured()
    planned, planned_total = gc(capsys, "--dry-run")
    assert measured() == before
    assert planned == expected
    assert planned_total == sum(size for _, size in expected.values())

    counted, freed = gc(capsys)
    assert counted == planned and freed == planned_total
    assert before - measured() == freed

    # What stays: the live version's package, the shared one, the retained, the running.
    for kept in (v5, v3, v4, v2):
        artifact_open(url=kept.artifact_url).close()
    assert v3.artifact_url == v5.artifact_url
    assert not stopped.exists() and (venvs / VENV_KEY).is_dir() and running.is_dir()
    assert (venvs / f".{building_key}-building").is_dir()
    assert Worker.objects.filter(pk=runner.pk).exists()
    # Rolling back to a version whose package went is a clear refusal.
    response = api_client.post(
        f"/api/v1/services/{name}/rollback", {"version": 1}, content_type="application/json"
    )
    assert response.status_code == 409 and "no longer stored" in response.json()["message"]
    # Nothing is left to free.
    assert gc(capsys)[1] == 0
    lock.close()


def test_nothing_younger_than_the_minimum_age_is_touched(
    api_client: Client,
    service_name: Callable[[], str],
    store_bytes: Callable[[], int],
    settings: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gone_name = service_name()
    deploy(api_client, gone_name, build(tmp_path, gone_name))
    service_delete(service=Service.objects.get(name=gone_name))
    folder = LocalLayout(Path(settings.MEMRUN_HOME)).worker_dir("w-just-made")
    folder.mkdir(parents=True)
    (folder / "worker.log").write_bytes(b"x" * 10)
    settings.MEMRUN_GC_MIN_AGE_S = 3600
    before = store_bytes()
    assert gc(capsys)[1] == 0
    assert store_bytes() == before > 0 and folder.is_dir()


def test_gc_is_for_staff_only(viewer: Any, settings: Any) -> None:
    """The plan names stored packages and folders, and a run deletes them: a token of a
    user without staff rights gets a 403 for both, and nothing is freed."""
    from apps.services.tokens import apitoken_create

    home = Path(settings.MEMRUN_HOME)
    stopped = LocalLayout(home).worker_dir("gc-viewer-stopped")
    stopped.mkdir(parents=True, exist_ok=True)
    (stopped / "worker.log").write_bytes(b"x" * 10)
    settings.MEMRUN_GC_MIN_AGE_S = 0
    _, secret = apitoken_create(user=viewer, name="viewer")
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    for dry_run in (True, False):
        response = client.post("/api/v1/gc", {"dry_run": dry_run}, content_type="application/json")
        assert response.status_code == 403, response.content
        assert "needs the admin role on all services" in response.json()["message"]
    assert (stopped / "worker.log").exists()
