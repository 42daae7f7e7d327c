"""Reconcile against the database: workers are registered and started with a spec of
their own, rollouts move on heartbeats, failures stop them, silence is death. The
provisioner only records; the clock is passed in."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db import connection
from django.test import TestCase

from apps.provisioning.reconcile import reconcile_service
from apps.services.models import Deployment, DeploymentEvent, Service
from apps.services.services import deployment_create
from apps.workers.models import Worker
from apps.workers.selectors import worker_get_by_credential
from apps.workers.services import worker_heartbeat
from memrun.wire.config import service_config_build
from tests.provisioning.conftest import Clock, RecordingProvisioner

pytestmark = pytest.mark.django_db


def deploy(service: Service, n: int, **settings: object) -> Deployment:
    """Version `n`, with 0..4 workers (and `settings`) unless told otherwise."""
    config = service_config_build(service.name, **{"min_workers": 0, "max_workers": 4, **settings})
    return deployment_create(
        service=service,
        sha256=f"{n:x}" * 64,
        size_bytes=1,
        artifact_url=f"file:///tmp/{n}",
        manifest={"config": config.to_dict()},
    )


def reconcile(service: Service, provisioner: RecordingProvisioner, clock: Clock) -> list:
    """One pass, with its after-commit creates and destroys run (the test's transaction
    never commits)."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return reconcile_service(service_id=service.pk, now=clock.now, provisioner=provisioner)


def heartbeat_all(service: Service, clock: Clock, *, state: str = "ready", deployment=None) -> dict:
    """Every running worker (of `deployment`) reports `state`; name -> action answered."""
    workers = service.workers.exclude(state__in=Worker.FINISHED_STATES)
    if deployment is not None:
        workers = workers.filter(deployment=deployment)
    return {
        w.name: worker_heartbeat(worker=w, state=state, stats={}, now=clock.now) for w in workers
    }


def states(service: Service) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for worker in service.workers.select_related("deployment").order_by("name"):
        found.setdefault(f"v{worker.deployment.version}:{worker.state}", []).append(worker.name)
    return {key: sorted(names) for key, names in found.items()}


def count(service: Service, version: int, state: str) -> int:
    return service.workers.filter(deployment__version=version, state=state).count()


@pytest.fixture
def service(service_factory: Callable[..., Service], settings) -> Service:
    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    settings.MEMRUN_WORKER_BOOT_TIMEOUT_S = 300.0
    return service_factory(desired_workers=2)


def bring_up(service: Service, provisioner: RecordingProvisioner, clock: Clock) -> Deployment:
    deployment = deploy(service, 1)
    reconcile(service, provisioner, clock)
    heartbeat_all(service, clock)
    reconcile(service, provisioner, clock)
    deployment.refresh_from_db()
    assert deployment.status == "active"
    return deployment


def test_new_workers_get_their_own_credential_and_nothing_more(
    service: Service,
    provisioner: RecordingProvisioner,
    clock: Clock,
    settings,
    django_capture_on_commit_callbacks,
) -> None:
    settings.MEMRUN_CONTROL_PLANE_URL = "http://cp.test:8000"
    deployment = deploy(service, 1)
    reconcile(service, provisioner, clock)
    assert len(provisioner.specs) == 2
    deployment.refresh_from_db()
    assert deployment.status == "rolling"
    for name, spec in provisioner.specs.items():
        worker = worker_get_by_credential(credential=spec.env["MEMRUN_WORKER_TOKEN"])
        assert worker is not None and worker.name == name
        assert worker.provider_ref == f"ref-{name}" and worker.state == "provisioning"
        assert spec.env["MEMRUN_URL"] == "http://cp.test:8000"
        assert spec.env["MEMRUN_WORKER_ID"] == name
        assert spec.env["MEMRUN_DEPLOYMENT_ID"] == str(deployment.pk)
        assert spec.env["MEMRUN_PACKAGE_SHA256"] == deployment.sha256
        assert spec.env["MEMRUN_SERVICE"] == service.name
        # I10: the worker runs, and the machine is sized for, its deployment's settings.
        assert json.loads(spec.env["MEMRUN_SERVICE_CONFIG"]) == deployment.manifest["config"]
        assert (spec.memory_bytes, spec.disk_bytes) == (4 * 2**30, 50 * 2**30)
        assert spec.labels == {
            "service": service.name,
            "worker": name,
            "deployment": str(deployment.pk),
        }
        # I8: the worker's own scoped credential, the brokers and S3; no admin or cloud keys.
        assert spec.env["MEMRUN_WORKER_TOKEN"].startswith("mrw_")
        secrets = {"MEMRUN_TOKEN", "SECRET_KEY", "DATABASE_URL", "HCLOUD_TOKEN"}
        assert not secrets & set(spec.env)
        assert not any(value.startswith("mr_") for value in spec.env.values())


def test_a_rolling_deploy_drains_old_workers_only_as_new_ones_are_ready(
    service: Service, provisioner: RecordingProvisioner, clock: Clock
) -> None:
    v1 = bring_up(service, provisioner, clock)
    v2 = deploy(service, 2)
    reconcile(service, provisioner, clock)
    assert count(service, 2, "provisioning") == 2 and count(service, 1, "ready") == 2

    clock.advance(5)
    first_new, second_new = service.workers.filter(deployment=v2)
    worker_heartbeat(worker=first_new, state="ready", stats={}, now=clock.now)
    worker_heartbeat(worker=second_new, state="booting", stats={}, now=clock.now)
    reconcile(service, provisioner, clock)
    assert count(service, 1, "draining") == 1 and count(service, 1, "ready") == 1
    # Told at once through its provisioner, not only at its next heartbeat.
    [draining] = service.workers.filter(deployment=v1, state="draining")
    assert provisioner.drained == [f"ref-{draining.name}"]
    answers = heartbeat_all(service, clock, deployment=v1)
    assert sorted(answers.values()) == ["drain", "run"]

    clock.advance(5)
    heartbeat_all(service, clock, deployment=v2)
    reconcile(service, provisioner, clock)
    v1.refresh_from_db()
    v2.refresh_from_db()
    assert (v1.status, v2.status) == ("superseded", "active")
    assert count(service, 1, "draining") == 2

    # The old workers report stopped after their drain; their processes go.
    old = list(service.workers.filter(deployment=v1))
    heartbeat_all(service, clock, state="stopped", deployment=v1)
    reconcile(service, provisioner, clock)
    assert {f"ref-{w.name}" for w in old} <= set(provisioner.destroyed)
    assert states(service).keys() == {"v1:stopped", "v2:ready"}
    events = list(
        DeploymentEvent.objects.filter(deployment__service=service)
        .order_by("id")
        .values_list("deployment__version", "from_status", "to_status", "actor")
    )
    assert events == [
        (1, "pending", "rolling", "reconcile"),
        (1, "rolling", "active", "reconcile"),
        (2, "pending", "rolling", "reconcile"),
        (1, "active", "superseded", "reconcile"),
        (2, "rolling", "active", "reconcile"),
    ]


def test_a_version_that_fails_to_start_is_failed_and_the_old_one_keeps_serving(
    service: Service, provisioner: RecordingProvisioner, clock: Clock
) -> None:
    v1 = bring_up(service, provisioner, clock)
    v2 = deploy(service, 2)
    reconcile(service, provisioner, clock)
    crashed, other = list(service.workers.filter(deployment=v2))
    worker_heartbeat(
        worker=crashed,
        state="stopped",
        stats={"exit_code": 1, "error": "an init handler failed: ValueError: boom"},
        now=clock.now,
    )
    provisioner.exited[crashed.name] = (1, "Traceback (most recent call last):\nValueError: boom")
    reconcile(service, provisioner, clock)

    v1.refresh_from_db()
    v2.refresh_from_db()
    assert v1.status == "active" and v2.status == "failed"
    assert v2.failure_reason.startswith(
        f"worker {crashed.name} of v2 exited with code 1 before it was ready: "
        "an init handler failed: ValueError: boom"
    )
    assert "log tail:\nTraceback (most recent call last):\nValueError: boom" in v2.failure_reason
    assert count(service, 2, "stopped") == 2 and count(service, 1, "ready") == 2
    assert {f"ref-{crashed.name}", f"ref-{other.name}"} <= set(provisioner.destroyed)
    event = DeploymentEvent.objects.get(deployment=v2, to_status="failed")
    assert event.actor == "reconcile" and "ValueError: boom" in event.reason

    # Later passes leave it at that: no new v2 worker, v1 untouched.
    assert reconcile(service, provisioner, clock) == []


def test_a_silent_worker_is_replaced_after_60_s_not_before(
    service: Service, provisioner: RecordingProvisioner, clock: Clock
) -> None:
    bring_up(service, provisioner, clock)
    quiet, chatty = list(service.workers.all())
    for seconds in (10, 10, 10, 10, 10):  # 50 s: the other keeps beating
        clock.advance(seconds)
        worker_heartbeat(worker=chatty, state="ready", stats={}, now=clock.now)
        assert reconcile(service, provisioner, clock) == []
    clock.advance(11)
    worker_heartbeat(worker=chatty, state="ready", stats={}, now=clock.now)
    reconcile(service, provisioner, clock)
    quiet.refresh_from_db()
    assert quiet.state == "dead"
    assert quiet.events.last().reason == "no heartbeat for 61 s"
    assert f"ref-{quiet.name}" in provisioner.destroyed
    assert count(service, 1, "provisioning") == 1  # its replacement


@pytest.mark.django_db(transaction=True)
def test_concurrent_reconciles_do_not_double_create(
    service_factory: Callable[..., Service],
    provisioner: RecordingProvisioner,
    clock: Clock,
    settings,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    service = service_factory(desired_workers=3)
    deploy(service, 1)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            reconcile_service(service_id=service.pk, now=clock.now, provisioner=provisioner)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert service.workers.count() == 3
    assert len(provisioner.specs) == 3


def test_a_crash_looping_version_backs_off_and_is_marked_degraded(
    service: Service, provisioner: RecordingProvisioner, clock: Clock, settings
) -> None:
    settings.MEMRUN_CRASH_BACKOFF_BASE_S = 10.0
    settings.MEMRUN_CRASH_DEGRADED_AFTER_FAILURES = 3
    v1 = bring_up(service, provisioner, clock)

    def crash_one() -> Worker:
        """A ready worker restarts itself (too many stuck handlers): stopped, code 75."""
        victim = service.workers.filter(state__in=["ready", "provisioning"]).first()
        assert victim is not None
        worker_heartbeat(worker=victim, state="ready", stats={}, now=clock.now)
        worker_heartbeat(
            worker=victim, state="stopped", stats={"exit_code": 75, "error": "stuck"}, now=clock.now
        )
        provisioner.exited[victim.name] = (75, f"{victim.name}: 3 handlers abandoned")
        return victim

    def created() -> int:
        return service.workers.count()

    # The first death is replaced at once.
    crash_one()
    before = created()
    reconcile(service, provisioner, clock)
    assert created() == before + 1
    # The second waits 10 s after it, recorded once however often reconcile runs.
    clock.advance(1)
    crash_one()
    before = created()
    reconcile(service, provisioner, clock)
    reconcile(service, provisioner, clock)
    assert created() == before
    v1.refresh_from_db()
    assert v1.crash_backoff_until == clock.now + timedelta(seconds=10) and not v1.degraded
    [event] = DeploymentEvent.objects.filter(deployment=v1, reason__startswith="crash loop")
    assert (event.from_status, event.to_status) == ("active", "active")
    assert "2 workers of v1 died" in event.reason and "exit code 75: stuck" in event.reason
    clock.advance(10)
    reconcile(service, provisioner, clock)
    assert created() == before + 1

    # The third: degraded, with the reason and the log tail; the wait doubles.
    clock.advance(1)
    third = crash_one()
    reconcile(service, provisioner, clock)
    v1.refresh_from_db()
    assert v1.degraded and v1.status == "active"
    assert f"3 workers of v1 died within 900 s; the last, {third.name}" in v1.degraded_reason
    assert f"log tail:\n{third.name}: 3 handlers abandoned" in v1.degraded_reason
    assert v1.crash_backoff_until == clock.now + timedelta(seconds=20)
    assert DeploymentEvent.objects.filter(deployment=v1, reason__startswith="degraded").count() == 1

    # A window without deaths: healthy again.
    clock.advance(901)
    heartbeat_all(service, clock)
    reconcile(service, provisioner, clock)
    heartbeat_all(service, clock)
    reconcile(service, provisioner, clock)
    v1.refresh_from_db()
    assert not v1.degraded and v1.degraded_at is None
    assert DeploymentEvent.objects.filter(deployment=v1, reason__startswith="recovered").exists()
