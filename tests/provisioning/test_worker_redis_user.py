"""A worker's spec gives it its service's Redis user, ensured first (a restarted Redis has
lost it), and never the default user the control plane and Celery use."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings
from django.test import TestCase

from apps.provisioning.reconcile import reconcile_service
from apps.services.models import Service
from apps.services.redis_users import redis_password, redis_username
from tests.provisioning.conftest import Clock, RecordingProvisioner
from tests.provisioning.test_reconcile import deploy

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    with TestCase.captureOnCommitCallbacks(execute=True):
        return service_factory()


def test_a_user_lost_by_a_restarted_redis_is_back_for_the_next_worker(
    service: Service,
    redis_client: redis.Redis,
    provisioner: RecordingProvisioner,
    clock: Clock,
) -> None:
    redis_client.execute_command("ACL", "DELUSER", redis_username(service.name))
    deploy(service, 1)
    with TestCase.captureOnCommitCallbacks(execute=True):
        reconcile_service(service_id=service.pk, now=clock.now, provisioner=provisioner)
    [spec] = provisioner.specs.values()
    worker = redis.Redis.from_url(spec.env["REDIS_URL"], socket_timeout=5)
    assert worker.ping()


def test_a_worker_spec_carries_its_services_user_and_never_the_default_one(
    service: Service, provisioner: RecordingProvisioner, clock: Clock
) -> None:
    deploy(service, 1)
    with TestCase.captureOnCommitCallbacks(execute=True):
        reconcile_service(service_id=service.pk, now=clock.now, provisioner=provisioner)
    [spec] = provisioner.specs.values()
    given, appliance = urlsplit(spec.env["REDIS_URL"]), urlsplit(settings.REDIS_URL)
    assert given.username == f"svc-{service.name}"
    assert given.password == redis_password(service=service)
    assert (given.hostname, given.port, given.path) == (
        appliance.hostname,
        appliance.port,
        appliance.path,
    )
    if appliance.password:
        assert all(appliance.password not in value for value in spec.env.values())
