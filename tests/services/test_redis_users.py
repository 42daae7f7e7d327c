"""Each service's Redis ACL user, against the real Redis: made when the service is, limited
to its prefix and the worker's commands, put back as it should be by every ensure,
rotated with the service's Kafka credentials, and removed with the service. Worker specs:
tests/provisioning/test_worker_redis_user.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.test import TestCase

from apps.services.deployments import service_kafka_credentials_rotate
from apps.services.models import Service
from apps.services.redis_users import (
    redis_user_ensure,
    redis_username,
    worker_redis_url,
)
from apps.services.services import service_delete
from memrun.wire.protocol import done_channel, outcome_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def service(service_factory: Callable[..., Service]) -> Service:
    """A new service, with what its creation does after commit done."""
    with TestCase.captureOnCommitCallbacks(execute=True):
        return service_factory()


def as_worker(service: Service) -> redis.Redis:
    return redis.Redis.from_url(worker_redis_url(service=service), socket_timeout=5)


def refused(call: Callable[[], Any]) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        call()


def test_a_new_service_has_a_user_limited_to_its_own_prefix(
    service: Service, service_factory: Callable[..., Service], redis_client: redis.Redis
) -> None:
    other = service_factory()
    worker = as_worker(service)
    assert worker.ping()
    own = outcome_key(service.name, "r1")
    assert worker.set(own, "1", nx=True, ex=60)
    assert worker.exists(own) == 1
    assert worker.publish(done_channel(service.name), "r1 {}") >= 0
    refused(lambda: worker.exists(outcome_key(other.name, "r1")))
    refused(lambda: worker.get(own))  # the worker never reads an outcome back
    refused(lambda: worker.publish(done_channel(other.name), "r1 {}"))
    refused(lambda: worker.lpush("celery", "{}"))
    refused(lambda: worker.keys("*"))
    refused(lambda: worker.flushall())
    refused(lambda: worker.config_get("*"))
    refused(lambda: worker.execute_command("SELECT", "1"))
    user = redis_client.acl_getuser(redis_username(service.name))
    assert user["keys"] == [f"~memrun:{service.name}:*"]
    assert user["channels"] == [f"&memrun:{service.name}:*"]


def test_an_ensure_takes_back_rights_added_by_hand(
    service: Service, redis_client: redis.Redis
) -> None:
    worker = as_worker(service)
    redis_client.execute_command("ACL", "SETUSER", redis_username(service.name), "+@all", "~*")
    assert worker.get("anything") is None
    redis_user_ensure(service=service)
    refused(lambda: worker.get("anything"))
    assert worker.ping()


def test_rotation_gives_a_new_password_and_the_old_one_is_refused(service: Service) -> None:
    old_url = worker_redis_url(service=service)
    with TestCase.captureOnCommitCallbacks(execute=True):
        generation, rolled = service_kafka_credentials_rotate(service=service)
    assert (generation, rolled) == (2, None)  # nothing deployed: no worker to roll
    service.refresh_from_db()
    assert worker_redis_url(service=service) != old_url
    assert as_worker(service).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old_url, socket_timeout=5).ping()


def test_deleting_the_service_removes_its_user_and_its_connections(
    service: Service, redis_client: redis.Redis
) -> None:
    worker = as_worker(service)
    assert worker.ping()
    with TestCase.captureOnCommitCallbacks(execute=True):
        service_delete(service=service)
    assert redis_client.acl_getuser(redis_username(service.name)) is None
    with pytest.raises(redis.exceptions.ConnectionError):
        worker.ping()


def test_rotating_a_deployed_services_credentials_rolls_its_workers(
    service: Service, deploy_settings: Callable[..., Any]
) -> None:
    live = deploy_settings(service, status="active")
    old_url = worker_redis_url(service=service)
    with TestCase.captureOnCommitCallbacks(execute=True):
        generation, rolled = service_kafka_credentials_rotate(service=service)
    assert generation == 2
    assert rolled is not None and rolled.version == live.version + 1
    assert (rolled.sha256, rolled.config) == (live.sha256, live.config)
    service.refresh_from_db()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(old_url, socket_timeout=5).ping()
    assert as_worker(service).ping()
