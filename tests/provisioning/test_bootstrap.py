"""A remote worker's first boot, for real without a VM: user-data rendered for a worker
that reconcile creates runs in a sandbox folder (tests/fixtures/bootstrap.py);
the worker it starts installs this appliance's wheel, exchanges its join token for its
credentials, registers, heartbeats and serves a request through Kafka from the live
control plane. Its join token is then spent: reused, it is refused."""

from __future__ import annotations

import itertools
import json
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.provisioning.provisioners import LiveWorker, WorkerSpec
from memrun.packaging import build_package
from tests.fixtures.bootstrap import Boot, BootFailed, bootstrap_run
from tests.worker_daemon.harness import wait_for, wait_outcomes

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HANDLERS = Path(__file__).parent / "handlers"
BOOT_TIMEOUT_S = 240.0


class SandboxFleet:
    """A `hetzner` provisioner whose servers are sandbox folders: `create` renders the
    worker's user-data and boots it (tests/fixtures/bootstrap.py); `server_verify` knows only the
    servers it made, as the Hetzner API does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ids = itertools.count(4711)
        self.servers: dict[int, str] = {}
        self.user_data: dict[str, str] = {}
        self.boots: dict[str, Boot] = {}
        self.failures: list[str] = []

    def create(self, spec: WorkerSpec) -> str:
        from apps.provisioning.userdata import worker_user_data

        server_id = next(self.ids)
        self.servers[server_id] = spec.name
        self.user_data[spec.name] = worker_user_data(spec=spec, server_name=f"mr-{spec.name}")
        try:
            self.boots[spec.name] = bootstrap_run(
                user_data=self.user_data[spec.name],
                root=self.root / f"server-{server_id}",
                server_id=str(server_id),
            )
        except BootFailed as exc:
            # Reconcile only logs what a create raises: the test reads it here.
            self.failures.append(str(exc))
            raise
        return str(server_id)

    def server_verify(self, *, server_id: int, worker_name: str) -> bool:
        return self.servers.get(server_id) == worker_name

    def drain(self, ref: str) -> None:
        self.destroy(ref)

    def destroy(self, ref: str) -> None:
        boot = self.boots.get(self.servers.get(int(ref), ""))
        if boot is not None:
            boot.stop()

    def list(self, labels: dict[str, str]) -> list[LiveWorker]:
        return [
            LiveWorker(
                name=name,
                ref=str(server_id),
                labels={},
                running=boot.process is not None and boot.process.poll() is None,
                log_tail=boot.output()[-2000:],
            )
            for server_id, name in self.servers.items()
            if (boot := self.boots.get(name)) is not None
        ]

    def stop(self) -> None:
        for boot in self.boots.values():
            boot.stop()


@pytest.fixture
def fleet(
    tmp_path: Path, settings: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SandboxFleet]:
    from apps.provisioning import provisioners

    home = tmp_path / "home"
    home.mkdir()
    settings.MEMRUN_HOME = home
    settings.MEMRUN_ARTIFACTS_URL = (home / "artifacts").as_uri()
    settings.MEMRUN_CONTROL_PLANE_URL = live_server.url
    settings.MEMRUN_RECONCILE_ON_EVENTS = True
    settings.MEMRUN_WORKER_EXTRA_ENV = {
        "MEMRUN_HEARTBEAT_INTERVAL_S": "1",
        "MEMRUN_SESSION_TIMEOUT_MS": "6000",
        "MEMRUN_GRACE_PERIOD_S": "5",
    }
    fleet = SandboxFleet(tmp_path / "servers")
    monkeypatch.setitem(provisioners._BACKENDS, "hetzner", lambda: fleet)
    yield fleet
    fleet.stop()


@pytest.fixture
def eager_celery() -> Iterator[None]:
    from memrun_site.celery import app

    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


@pytest.mark.timeout(900)
def test_a_bootstrapped_worker_joins_heartbeats_and_serves_through_kafka(
    fleet: SandboxFleet,
    bootstrap_wheels: Path,
    eager_celery: None,
    service_name: Callable[[], str],
    tmp_path: Path,
    redis_client: Any,
) -> None:
    from apps.provisioning.models import JoinToken
    from apps.provisioning.reconcile import reconcile_service
    from apps.services.deployments import deployment_upload
    from apps.services.services import service_create
    from apps.services.uploads import Upload
    from apps.workers.models import Worker

    name = service_name()
    service = service_create(name=name, provider="hetzner", partitions=4)
    package = tmp_path / "echo.tar.gz"
    build_package(HANDLERS / "echo.py", overrides={"name": name}, out=package)
    deployment = deployment_upload(
        service_name=name,
        upload=Upload(package, package.stat().st_size, package.name, False, ""),
    )

    def active() -> bool:
        assert not fleet.failures, fleet.failures[0]
        reconcile_service(service_id=service.pk)
        deployment.refresh_from_db()
        return deployment.status == "active"

    wait_for(active, timeout_s=BOOT_TIMEOUT_S, what="the bootstrapped worker to go live")
    [worker] = Worker.objects.filter(service=service, state="ready")
    boot = fleet.boots[worker.name]
    assert int(worker.provider_ref) in fleet.servers and worker.last_heartbeat_at is not None

    # It serves a request through Kafka, from the process the unit started.
    request_id = _submit(name, {"user": 7})
    outcome = wait_outcomes(redis_client, [request_id], timeout_s=BOOT_TIMEOUT_S)[request_id]
    assert outcome.ok and outcome.result["worker"] == worker.name, boot.output()

    # The boot ran the user-data's steps; only root, apt and systemd ones were skipped.
    assert any("uv pip install" in step for step in boot.ran)
    assert any("memrun worker join" in step for step in boot.ran)
    assert any(s.startswith("packages:") for s in boot.skipped)
    assert any("chown" in s for s in boot.skipped)
    assert any("User=memrun" in s for s in boot.skipped)
    env_file = boot.path("/etc/memrun/worker.env")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert not boot.path("/etc/memrun/join-token").exists()
    assert stat.S_IMODE(boot.path("/var/lib/memrun/cache").stat().st_mode) == 0o700
    used = JoinToken.objects.get(worker_name=worker.name)
    assert used.used_at is not None and used.server_id == worker.provider_ref

    # The token in its user-data is spent: the same join again is refused, nothing written.
    token = _join_token_of(fleet.user_data[worker.name])
    again = boot.path("/etc/memrun/again.env")
    refused = subprocess.run(
        [
            str(boot.path("/opt/memrun/venv/bin/memrun")),
            "worker",
            "join",
            "--url",
            fleet_url(),
            "--token",
            token,
            "--server-id",
            worker.provider_ref,
            "--env-file",
            str(again),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1 and "already used" in refused.stderr, refused.stderr
    assert not again.exists()


def fleet_url() -> str:
    from django.conf import settings

    return str(settings.MEMRUN_CONTROL_PLANE_URL)


def _join_token_of(user_data: str) -> str:
    import yaml

    files = {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}
    return str(files["/etc/memrun/join-token"])


def _submit(service: str, payload: dict[str, Any]) -> str:
    from asgiref.sync import async_to_sync

    from apps.services.invoke import InvokeTarget, requests_submit
    from memrun.wire.protocol import new_request_id
    from memrun.wire.sticky import StickyTemplate

    sticky = StickyTemplate.parse("user")
    target = InvokeTarget(service=service, sticky=sticky, timeout_seconds=120, refusal=None)
    request_id = new_request_id()
    async_to_sync(requests_submit)(
        target=target,
        items=[(sticky.key_for(payload), json.dumps(payload).encode())],
        request_ids=[request_id],
    )
    return request_id
