"""Services: create (with its Kafka topics), update of the fleet, delete, and the rules
they enforce. Their settings are their deployments' (tests/services/test_settings.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from apps.common.errors import DomainError
from apps.services.models import Service
from apps.services.services import service_create, service_delete, service_update
from apps.workers.models import Worker
from apps.workers.services import worker_create
from memrun.wire import protocol

pytestmark = pytest.mark.django_db


def topic_partitions(admin: AdminClient, topic: str) -> int | None:
    meta = admin.list_topics(timeout=10).topics.get(topic)
    return None if meta is None else len(meta.partitions)


def fields_of(exc: pytest.ExceptionInfo[DomainError]) -> dict[str, Any]:
    return exc.value.details["fields"]


def test_create_makes_both_topics_with_one_partition_count(
    service_name: Callable[[], str], kafka_admin: AdminClient
) -> None:
    name = service_name()
    service = service_create(name=name, partitions=8, desired_workers=2)
    service.refresh_from_db()
    assert (service.partitions, service.desired_workers) == (8, 2)
    assert topic_partitions(kafka_admin, protocol.request_topic(name)) == 8
    assert topic_partitions(kafka_admin, protocol.dlq_topic(name)) == 8


def test_a_new_service_has_no_settings_until_deployed(
    service_factory: Callable[..., Service], deploy_settings: Callable[..., Any]
) -> None:
    service = service_factory(partitions=None)
    assert (service.partitions, service.desired_workers) == (64, 1)
    assert service.live_deployment is None and service.config is None
    deployment = deploy_settings(service, concurrency=4)
    assert service.live_deployment == deployment
    assert service.config is not None and service.config.concurrency == 4


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": "Not_Valid"}, "name"),
        ({"partitions": 0}, "partitions"),
        ({"provider": "aws"}, "provider"),
        ({"server_type": "x" * 33}, "server_type"),
    ],
)
def test_invalid_input_names_the_field(
    service_factory: Callable[..., Service], fields: dict[str, Any], bad_field: str
) -> None:
    with pytest.raises(DomainError) as exc:
        service_factory(**fields)
    assert exc.value.status == 422
    assert list(fields_of(exc)) == [bad_field]
    assert bad_field in exc.value.message
    assert not Service.objects.exists()


def test_every_problem_is_reported_at_once(service_factory: Callable[..., Service]) -> None:
    with pytest.raises(DomainError) as exc:
        service_factory(name="x", provider="aws")
    assert set(fields_of(exc)) == {"name", "provider"}


def test_duplicate_name_is_409(service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    with pytest.raises(DomainError) as exc:
        service_factory(name=service.name)
    assert exc.value.status == 409
    assert list(fields_of(exc)) == ["name"]


def test_broker_down_is_503_and_saves_nothing(
    service_name: Callable[[], str], kafka_down: str
) -> None:
    with pytest.raises(DomainError) as exc:
        service_create(name=service_name(), partitions=4)
    assert exc.value.status == 503
    assert kafka_down in exc.value.message
    assert "bash scripts/services up" in exc.value.message
    assert not Service.objects.exists()


def test_existing_topics_with_the_same_partition_count_are_reused(
    service_name: Callable[[], str], kafka_admin: AdminClient
) -> None:
    name = service_name()
    topic = protocol.request_topic(name)
    kafka_admin.create_topics([NewTopic(topic, num_partitions=4)])[topic].result(timeout=30)
    service_create(name=name, partitions=4)
    assert topic_partitions(kafka_admin, protocol.dlq_topic(name)) == 4


def test_existing_topic_with_another_partition_count_is_409(
    service_name: Callable[[], str], kafka_admin: AdminClient
) -> None:
    name = service_name()
    topic = protocol.request_topic(name)
    kafka_admin.create_topics([NewTopic(topic, num_partitions=2)])[topic].result(timeout=30)
    with pytest.raises(DomainError) as exc:
        service_create(name=name, partitions=4)
    assert exc.value.status == 409
    assert "partitions=2" in exc.value.message
    assert not Service.objects.exists()


def test_update_changes_the_fleet(service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    updated = service_update(
        service=service, data={"desired_workers": 3, "server_type": "ccx63", "location": "fsn1"}
    )
    updated.refresh_from_db()
    assert (updated.desired_workers, updated.server_type, updated.location) == (3, "ccx63", "fsn1")


def test_desired_workers_stay_within_the_live_bounds(
    service_factory: Callable[..., Service], deploy_settings: Callable[..., Any]
) -> None:
    service = service_factory()
    deploy_settings(service, min_workers=1, max_workers=2)
    with pytest.raises(DomainError) as exc:
        service_update(service=service, data={"desired_workers": 3})
    assert exc.value.status == 422
    assert "max_workers (2)" in exc.value.message
    assert list(fields_of(exc)) == ["desired_workers"]


def test_partitions_are_fixed_after_create(service_factory: Callable[..., Service]) -> None:
    service = service_factory(partitions=4)
    assert service_update(service=service, data={"partitions": 4}).partitions == 4
    with pytest.raises(DomainError) as exc:
        service_update(service=service, data={"partitions": 8})
    assert exc.value.status == 422
    assert "fixed at creation" in exc.value.message
    assert list(fields_of(exc)) == ["partitions"]


@pytest.mark.parametrize("field", ["name", "memory", "concurrency"])
def test_update_refuses_what_is_not_the_fleet(
    service_factory: Callable[..., Service], field: str
) -> None:
    with pytest.raises(DomainError) as exc:
        service_update(service=service_factory(), data={field: "x"})
    assert list(fields_of(exc)) == [field]


def test_delete_keeps_the_topics(
    service_factory: Callable[..., Service], kafka_admin: AdminClient
) -> None:
    service = service_factory()
    service_delete(service=service)
    assert not Service.objects.exists()
    assert topic_partitions(kafka_admin, service.request_topic) == 4


def test_delete_is_refused_while_a_worker_runs(service_factory: Callable[..., Service]) -> None:
    service = service_factory()
    worker, _credential = worker_create(service=service, name=f"{service.name}-w0")
    with pytest.raises(DomainError) as exc:
        service_delete(service=service)
    assert exc.value.status == 409
    assert exc.value.details["running_workers"] == 1

    Worker.objects.filter(pk=worker.pk).update(state=Worker.State.STOPPED)
    service_delete(service=service)
    assert not Worker.objects.exists()
