"""Reconcile for provider=hetzner, run for real (the Celery tasks' functions) against the
stand-in through the hcloud library: scaling leaves exactly the servers it should under
injected faults, orphans go, a worker whose server vanished or that never registers is
replaced, the worker rows carry their machine and its cost, and the API calls stay within
budget."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, TestCase

from apps.provisioning import tasks
from apps.services.models import Deployment, Service
from apps.workers.models import Worker
from apps.workers.services import worker_heartbeat
from memrun.cli.workers import monthly_total, worker_rows
from tests.hetzner.standin import StandIn

pytestmark = pytest.mark.django_db

# Requests per provisioned worker while a service scales 0 -> 3 (no faults), passes
# included: the stated budget (measured: see test_api_calls_per_worker_stay_in_budget).
CALLS_PER_WORKER_BUDGET = 8


@pytest.fixture
def service(
    service_factory: Callable[..., Service], settings: Any, hetzner_standin: StandIn
) -> Service:
    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    settings.MEMRUN_ORPHAN_GRACE_S = 0.0
    settings.MEMRUN_CREATE_RETRY_S = 0.0
    return service_factory(desired_workers=0, provider="hetzner")


def deploy(deploy_settings: Callable[..., Deployment], service: Service) -> Deployment:
    return deploy_settings(service, min_workers=0, max_workers=4, memory="4Gi", disk="50Gi")


def reconcile_pass() -> None:
    """One beat of the periodic task, its after-commit creates and destroys included (a
    service whose pass fails is logged and left to the next beat, as in production)."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        tasks.reconcile()


def passes_until(condition: Callable[[], bool], *, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        reconcile_pass()
        if condition():
            return
        assert time.monotonic() < deadline, "reconcile did not get there in time"
        time.sleep(0.2)


def scale(service: Service, n: int) -> None:
    Service.objects.filter(pk=service.pk).update(desired_workers=n)


def running(service: Service) -> list[Worker]:
    return list(service.workers.exclude(state__in=Worker.FINISHED_STATES).order_by("name"))


def heartbeat(service: Service, state: str, *, only: str = "") -> None:
    for worker in running(service):
        if not only or worker.state == only:
            worker_heartbeat(worker=worker, state=state, stats={})


def server_names(standin: StandIn) -> list[str]:
    return sorted(s["name"] for s in standin.servers())


def test_scale_0_3_1_0_under_faults_leaves_no_server(
    service: Service, hetzner_standin: StandIn, deploy_settings: Callable[..., Deployment]
) -> None:
    deployment = deploy(deploy_settings, service)
    reconcile_pass()
    assert hetzner_standin.servers() == []

    scale(service, 3)
    hetzner_standin.fault("create_timeout", method="POST", path="/servers")
    hetzner_standin.fault("action_error", method="POST", path="/servers")
    hetzner_standin.fault("bad_gateway", method="GET", path="/servers")
    hetzner_standin.fault("rate_limit", method="GET", path="/placement_groups", reset_s=1)
    passes_until(
        lambda: (
            len(hetzner_standin.servers()) == 3 and all(w.provider_ref for w in running(service))
        )
    )
    workers = running(service)
    assert len(workers) == 3
    # Exactly one server per worker, named and labelled for it, whatever the faults did.
    assert server_names(hetzner_standin) == sorted(w.name for w in workers)
    assert {w.provider_ref for w in workers} == {str(s["id"]) for s in hetzner_standin.servers()}
    for server in hetzner_standin.servers():
        assert server["labels"]["memrun-service"] == service.name
        assert server["labels"]["memrun-deployment"] == str(deployment.pk)
    heartbeat(service, "ready")
    passes_until(lambda: Deployment.objects.get(pk=deployment.pk).status == "active")

    scale(service, 1)
    reconcile_pass()
    assert service.workers.filter(state="draining").count() == 2
    heartbeat(service, "stopped", only="draining")
    passes_until(lambda: len(hetzner_standin.servers()) == 1)
    [kept] = running(service)
    assert server_names(hetzner_standin) == [kept.name]

    scale(service, 0)
    hetzner_standin.fault("gateway_timeout", method="DELETE", path="/servers/\\d+")
    reconcile_pass()
    heartbeat(service, "stopped", only="draining")
    passes_until(lambda: hetzner_standin.servers() == [])
    assert running(service) == []
    assert len(hetzner_standin.placement_groups) == 1


def test_api_calls_per_worker_stay_in_budget(
    service: Service, hetzner_standin: StandIn, deploy_settings: Callable[..., Deployment]
) -> None:
    deploy(deploy_settings, service)
    hetzner_standin.calls_reset()
    scale(service, 3)
    passes_until(lambda: all(w.provider_ref for w in running(service)) and running(service))
    heartbeat(service, "ready")
    reconcile_pass()
    calls = sum(hetzner_standin.calls.values())
    print(f"API calls for 3 workers: {calls} ({dict(hetzner_standin.calls)})")
    assert calls <= 3 * CALLS_PER_WORKER_BUDGET


def test_the_pass_budget_defers_creates_to_the_next_pass(
    service: Service,
    hetzner_standin: StandIn,
    deploy_settings: Callable[..., Deployment],
    settings: Any,
) -> None:
    settings.HCLOUD_REQUESTS_PER_PASS = 9
    deploy(deploy_settings, service)
    scale(service, 3)
    reconcile_pass()
    assert 0 < len(hetzner_standin.servers()) < 3
    passes_until(lambda: len(hetzner_standin.servers()) == 3)
    assert server_names(hetzner_standin) == sorted(w.name for w in running(service))


def test_orphans_go_after_the_grace_and_vanished_servers_are_replaced(
    service: Service,
    hetzner_standin: StandIn,
    deploy_settings: Callable[..., Deployment],
    settings: Any,
) -> None:
    deploy(deploy_settings, service)
    scale(service, 1)
    passes_until(lambda: len(hetzner_standin.servers()) == 1)
    [worker] = running(service)

    settings.MEMRUN_ORPHAN_GRACE_S = 3600.0
    orphan = hetzner_standin.add_server(
        name=f"{service.name}-v1-0rphan",
        labels={"memrun-service": service.name, "memrun-worker": f"{service.name}-v1-0rphan"},
    )
    reconcile_pass()
    assert orphan in {s["id"] for s in hetzner_standin.servers()}  # young: left alone
    settings.MEMRUN_ORPHAN_GRACE_S = 0.0
    reconcile_pass()
    assert server_names(hetzner_standin) == [worker.name]

    hetzner_standin.vanish(int(worker.provider_ref))
    passes_until(lambda: len(hetzner_standin.servers()) == 1 and running(service))
    worker.refresh_from_db()
    assert worker.state == "dead"
    assert worker.events.last().reason == "its machine is gone (deleted outside memrun?)"
    [replacement] = running(service)
    assert server_names(hetzner_standin) == [replacement.name] != [worker.name]


def test_a_worker_that_never_registers_is_destroyed_and_the_rollout_says_why(
    service: Service,
    hetzner_standin: StandIn,
    deploy_settings: Callable[..., Deployment],
    settings: Any,
) -> None:
    settings.MEMRUN_WORKER_BOOT_TIMEOUT_S = 1.0
    deployment = deploy(deploy_settings, service)
    scale(service, 1)
    passes_until(lambda: len(hetzner_standin.servers()) == 1)
    [silent] = running(service)
    passes_until(lambda: hetzner_standin.servers() == [])
    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert f"worker {silent.name} of v1 was not ready within the boot timeout" in (
        deployment.failure_reason
    )


def test_workers_carry_their_machine_and_cost(
    service: Service,
    hetzner_standin: StandIn,
    deploy_settings: Callable[..., Deployment],
    api_client: Client,
    user: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Service.objects.filter(pk=service.pk).update(server_type="cpx41", location="nbg1")
    deploy(deploy_settings, service)
    scale(service, 3)
    passes_until(lambda: len(hetzner_standin.servers()) == 3)
    reconcile_pass()
    workers = running(service)
    for worker in workers:
        assert worker.machine["server_type"] == "cpx41"
        assert worker.machine["location"] == "nbg1"
        assert worker.machine["server_id"] == int(worker.provider_ref)
        assert worker.machine["price_monthly_eur"] == "25.2000"
        assert worker.machine["ipv4"]

    # The API's worker schema, `memrun workers` and the UI's worker list show them, and
    # the service's total: 3 x cpx41 in nbg1 at 25.20 EUR/month (net) = 75.60.
    answer = api_client.get(f"/api/v1/services/{service.name}/workers")
    assert answer.status_code == 200
    machines = [w["machine"] for w in answer.json()]
    assert sorted(m["server_id"] for m in machines) == sorted(int(w.provider_ref) for w in workers)
    assert {m["price_monthly_eur"] for m in machines} == {"25.2000"}
    rows = worker_rows(answer.json())
    assert rows[0][-1] == "MACHINE"
    assert all(
        row[-1].startswith("cpx41@nbg1 #") and row[-1].endswith("25.20 EUR/mo") for row in rows[1:]
    )
    assert monthly_total(answer.json()) == Decimal("75.60")

    browser = Client()
    browser.force_login(user)
    page = browser.get(f"/services/{service.name}/").content.decode()
    assert '<span class="cost-total">75.60 EUR/month</span>' in page
    assert page.count('<td class="cost">25.20</td>') == 3


def test_replacements_that_never_register_back_off_and_degrade_the_deployment(
    service: Service,
    hetzner_standin: StandIn,
    deploy_settings: Callable[..., Deployment],
    settings: Any,
) -> None:
    settings.MEMRUN_WORKER_BOOT_TIMEOUT_S = 2.0
    settings.MEMRUN_CRASH_BACKOFF_BASE_S = 1.0
    settings.MEMRUN_CRASH_BACKOFF_MAX_S = 2.0
    settings.MEMRUN_CRASH_DEGRADED_AFTER_FAILURES = 3
    deployment = deploy(deploy_settings, service)
    scale(service, 1)
    passes_until(lambda: len(hetzner_standin.servers()) == 1)
    heartbeat(service, "ready")
    passes_until(lambda: Deployment.objects.get(pk=deployment.pk).status == "active")
    [first] = running(service)

    # Its server goes; every replacement boots a server whose worker never registers.
    hetzner_standin.vanish(int(first.provider_ref))

    def degraded() -> bool:
        # Never more than one server for the one desired worker, whatever happens.
        assert len(hetzner_standin.servers()) <= 1
        return bool(Deployment.objects.get(pk=deployment.pk).degraded_reason)

    passes_until(degraded)
    deployment.refresh_from_db()
    assert deployment.status == "active"
    assert "workers of v1 died within" in deployment.degraded_reason
    assert "not ready within the boot timeout of 2 s" in deployment.degraded_reason
    reasons = list(deployment.events.values_list("reason", flat=True))
    assert any(reason.startswith("crash loop: ") for reason in reasons), reasons
    dead = service.workers.filter(state="dead").count()
    assert dead >= 3
    assert server_names(hetzner_standin) == [w.name for w in running(service)]
