"""provider=hetzner end to end on the stand-in: `memrun deploy` of a Hetzner service makes
servers through the real hcloud library; each server the stand-in makes is "booted" from
the user-data memrun sent it (tests/fixtures/bootstrap.py: the setup steps run for real
in a sandbox folder, the worker's unit as a child process), its worker joins with its
single-use token, registers and heartbeats; the deployment goes active and invoke is
served by the bootstrapped workers. A join token is good once, on its own server only."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from memrun import Client
from memrun.cli import main
from tests.fixtures.bootstrap import Boot, BootFailed, bootstrap_run
from tests.hetzner.standin import StandIn
from tests.worker_daemon.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

HANDLER = Path(__file__).resolve().parents[1] / "provisioning" / "handlers" / "echo.py"
BOOT_TIMEOUT_S = 300.0


class Datacenter:
    """What boots the stand-in's servers: each new server's user-data runs in its own
    sandbox folder, on a thread (the stand-in calls back from its request handler)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.boots: dict[int, Boot] = {}
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def server_created(self, server_id: int, name: str, user_data: str) -> None:
        thread = threading.Thread(target=self._boot, args=(server_id, user_data), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _boot(self, server_id: int, user_data: str) -> None:
        try:
            boot = bootstrap_run(
                user_data=user_data,
                root=self.root / f"server-{server_id}",
                server_id=str(server_id),
            )
        except BootFailed as exc:
            with self.lock:
                self.failures.append(f"server {server_id}: {exc}")
            return
        with self.lock:
            self.boots[server_id] = boot

    def stop(self) -> None:
        for thread in self.threads:
            thread.join(timeout=BOOT_TIMEOUT_S)
        for boot in self.boots.values():
            boot.stop()


@pytest.fixture
def datacenter(
    hetzner_standin: StandIn,
    live_home: Path,
    live_server: Any,
    tmp_path: Path,
    api_token: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Datacenter]:
    from memrun_site.celery import app

    monkeypatch.setenv("MEMRUN_URL", live_server.url)
    monkeypatch.setenv("MEMRUN_TOKEN", api_token[1])
    datacenter = Datacenter(tmp_path / "servers")
    hetzner_standin.on_server_created = datacenter.server_created
    # The rollout a deploy starts and the reconcile a heartbeat wakes run where they are
    # queued (the live server's threads); nothing goes to the shared Celery broker.
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield datacenter
    app.conf.task_always_eager = before
    datacenter.stop()


def test_a_hetzner_service_goes_active_on_bootstrapped_servers_and_serves_invoke(
    datacenter: Datacenter,
    hetzner_standin: StandIn,
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apps.provisioning.models import JoinToken
    from apps.provisioning.reconcile import reconcile_service
    from apps.services.models import Service
    from apps.workers.models import Worker

    name = service_name()
    client = Client()
    created = httpx.post(
        f"{client.url}/api/v1/services",
        json={"name": name, "provider": "hetzner", "partitions": 4, "desired_workers": 2},
        headers={"Authorization": f"Bearer {os.environ['MEMRUN_TOKEN']}"},
        timeout=60,
    )
    assert created.status_code == 201, created.text
    handler = tmp_path / "handler.py"
    handler.write_text(HANDLER.read_text())

    # `memrun deploy` follows the rollout; workers join as their servers finish booting.
    deployed: dict[str, Any] = {}

    def deploy() -> None:
        deployed["code"] = main(["deploy", str(handler), "--name", name])

    thread = threading.Thread(target=deploy, daemon=True)
    thread.start()
    service = Service.objects.get(name=name)

    def live() -> bool:
        assert not datacenter.failures, datacenter.failures[0]
        if thread.is_alive():
            # Beat's part: a pass now and then, as the appliance's beat would run it.
            reconcile_service(service_id=service.pk)
            return False
        return True

    wait_for(live, timeout_s=BOOT_TIMEOUT_S * 2, what="memrun deploy to see the version live")
    out, err = capsys.readouterr()
    assert deployed["code"] == 0, out + err
    assert f"done: {name} v1 is live" in out

    ready = Worker.objects.filter(service=service, state="ready").order_by("name")
    assert ready.count() == 2
    servers = {str(s["id"]): s for s in hetzner_standin.servers()}
    for worker in ready:
        assert worker.provider_ref in servers, "each worker is a stand-in server"
        assert servers[worker.provider_ref]["name"] == worker.name
        boot = datacenter.boots[int(worker.provider_ref)]
        assert boot.process is not None and boot.process.poll() is None, boot.output()
        assert worker.last_heartbeat_at is not None
        used = JoinToken.objects.get(worker_name=worker.name, used_at__isnull=False)
        assert used.server_id == worker.provider_ref

    # Each boot ran the user-data's steps; only what needs root, apt or systemd was
    # skipped (and listed); the worker's env file is 0600, its token file gone.
    boot = next(iter(datacenter.boots.values()))
    assert any("uv pip install" in step for step in boot.ran)
    assert any("memrun worker join" in step for step in boot.ran)
    assert any(s.startswith("packages:") for s in boot.skipped)
    assert any("chown" in s for s in boot.skipped)
    assert any("User=memrun" in s for s in boot.skipped)
    assert stat.S_IMODE(boot.path("/etc/memrun/worker.env").stat().st_mode) == 0o600
    assert stat.S_IMODE(boot.path("/var/lib/memrun/cache").stat().st_mode) == 0o700
    assert not boot.path("/etc/memrun/join-token").exists()

    # Invoke is served by the bootstrapped workers, through Kafka.
    served = {client.invoke(name, {"user": user}, wait=60)["worker"] for user in range(12)}
    assert served <= {w.name for w in ready} and served

    # Each server's join token is spent; another server's id does not take it either.
    server_id, boot = next(iter(datacenter.boots.items()))
    token = _join_token(hetzner_standin.user_data(server_id))
    other = next(s for s in datacenter.boots if s != server_id)
    for claimed, why in ((server_id, "already used"), (other, "already used")):
        refused = _join(boot, token=token, server_id=claimed)
        assert refused.returncode == 1 and why in refused.stderr, refused.stderr


def test_a_server_the_stand_in_does_not_know_cannot_join(
    hetzner_standin: StandIn, service_factory: Any, deploy_settings: Any
) -> None:
    from apps.common.errors import DomainError
    from apps.provisioning.joins import worker_join
    from apps.provisioning.jointokens import join_token_issue
    from apps.workers.services import worker_create

    service = service_factory(provider="hetzner")
    deployment = deploy_settings(service, status="active")
    worker, _ = worker_create(
        service=service, deployment=deployment, name=f"{service.name}-v1-feed01", provider="hetzner"
    )
    token = join_token_issue(worker_name=worker.name)
    stranger = hetzner_standin.add_server(name="not-memrun", labels={})
    for server_id in (stranger, 987654):
        with pytest.raises(DomainError) as refused:
            worker_join(token=token, server_id=server_id, client="test")
        assert refused.value.status == 403
        assert f"server {server_id} is not the hetzner server of worker" in refused.value.message


def _join_token(user_data: str) -> str:
    files = {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}
    return str(files["/etc/memrun/join-token"])


def _join(boot: Boot, *, token: str, server_id: int) -> subprocess.CompletedProcess[str]:
    from django.conf import settings

    return subprocess.run(
        [
            str(boot.path("/opt/memrun/venv/bin/memrun")),
            "worker",
            "join",
            "--url",
            settings.MEMRUN_CONTROL_PLANE_URL,
            "--token",
            token,
            "--server-id",
            str(server_id),
            "--env-file",
            str(boot.path("/etc/memrun/again.env")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
