"""Local workers are confined, end to end with real processes (the supervisor as `memrun up`
runs it, sandboxed where bwrap works, which it does on the project's machines): a hostile
handler cannot open the appliance's secrets, another worker's files or another process's
environment, and one that allocates past its service's memory is killed by the kernel and
restarted with the reason recorded, while the appliance and another service keep answering."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.provisioning.local_layout import LocalLayout, read_json
from apps.provisioning.local_sandbox import SANDBOX_UID, memory_cgroups_detect
from apps.provisioning.provisioners.local import LocalProvisioner
from tests.provisioning import test_end_to_end as e2e
from tests.provisioning.test_end_to_end import Scenario
from tests.worker_daemon.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
# The end-to-end tests' fixtures: a live appliance, and the supervisor as `memrun up` runs it.
worker_grace_period_s, eager_celery, supervisor, scenario = (
    e2e.worker_grace_period_s,
    e2e.eager_celery,
    e2e.supervisor,
    e2e.scenario,
)


def other_service(scenario: Scenario, name: str) -> Scenario:
    """A second service beside the scenario's, on the same appliance and supervisor."""
    return Scenario(name, scenario.home, scenario.tmp, scenario.redis, scenario.client)


def answer(service: Scenario, payload: dict[str, Any]) -> Any:
    [outcome] = service.outcomes([service.submit_payload(payload, sticky_template="user")])
    assert outcome.ok, outcome
    return outcome.result


def deploy_live(service: Scenario, handler: str) -> str:
    deployment = service.deploy(handler)
    service.until(lambda: service.status(deployment) == "active", f"{handler} to be live")
    [worker] = service.workers("ready")
    return str(worker.name)


def test_a_hostile_handler_cannot_open_the_appliances_secrets_or_other_workers_files(
    scenario: Scenario, supervisor: subprocess.Popen[bytes], service_name: Any
) -> None:
    bystander = other_service(scenario, service_name())
    their_worker = deploy_live(bystander, "echo.py")
    deploy_live(scenario, "hostile.py")
    appliance_home = scenario.home
    for secret in ("secret-key", "cli-token", "memrun.sqlite3"):
        (appliance_home / secret).write_text("TOP SECRET")
    layout = LocalLayout(appliance_home)
    their_cache = layout.cache_root(bystander.name, their_worker) / bystander.name
    (their_cache / "theirs").write_text("their data")
    their_handover = layout.handover_dir(bystander.name) / "w-gone" / "files" / "theirs"
    their_handover.parent.mkdir(parents=True)
    their_handover.write_text("their handed-over data")
    targets = [
        str(appliance_home / "secret-key"),
        str(appliance_home / "cli-token"),
        str(appliance_home / "memrun.sqlite3"),
        str(layout.spec_path(their_worker)),
        str(their_cache / "theirs"),
        str(their_handover),
        str(layout.log_path(their_worker)),
        f"/proc/{os.getpid()}/environ",  # this process serves the control plane
        f"/proc/{supervisor.pid}/environ",
    ]
    for target in targets:  # each is there and readable to the appliance itself
        assert Path(target).read_bytes()

    result = answer(scenario, {"user": 1, "read": targets})
    assert result["uid"] == SANDBOX_UID
    assert {path for path, how in result["opened"].items() if how == "read"} == set()
    assert set(result["opened"]) == set(targets)

    # Both keep serving.
    assert "worker" in answer(scenario, {"user": 2})
    assert answer(bystander, {"user": 3})["worker"] == their_worker


def test_a_handler_past_its_memory_is_killed_and_restarted_with_the_reason(
    scenario: Scenario, supervisor: subprocess.Popen[bytes], service_name: Any, live_server: Any
) -> None:
    cgroups, why_not = memory_cgroups_detect()
    assert cgroups is not None, f"the project's machines offer memory cgroups: {why_not}"
    bystander = other_service(scenario, service_name())
    their_worker = deploy_live(bystander, "echo.py")
    ours = deploy_live(scenario, "hostile.py")

    # 1 GiB in a 256 MiB service: the kernel kills that worker; its successor gets the
    # request again and answers it.
    result = answer(scenario, {"user": 1, "allocate_mib": 1024})
    assert result["after_restart"] is True

    status = read_json(LocalLayout(scenario.home).status_path(ours)) or {}
    assert status["restarts"] >= 1
    assert "over its memory limit of 268435456 bytes" in status["reason"]
    [live] = LocalProvisioner(scenario.home).list({"worker": ours})
    assert "over its memory limit" in live.log_tail
    # The appliance, the supervisor and the other service were not touched.
    assert supervisor.poll() is None
    assert httpx.get(f"{live_server.url}/api/v1/health", timeout=30).status_code == 200
    assert answer(bystander, {"user": 2})["worker"] == their_worker
    wait_for(
        lambda: (
            (read_json(LocalLayout(scenario.home).status_path(ours)) or {}).get("state")
            == "running"
        ),
        what="the restarted worker's status",
    )
