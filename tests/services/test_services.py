"""Services: create (with its Kafka topics), update, delete, and the rules they enforce."""

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

GiB = 2**30


def topic_partitions(admin: AdminClient, topic: str) -> int | None:
    meta = admin.list_topics(timeout=10).topics.get(topic)
    return None if meta is None else len(meta.partitions)


def fields_of(exc: pytest.ExceptionInfo[DomainError]) -> dict[str, Any]:
    return exc.value.details["fields"]


def test_create_stores_sizes_in_bytes_and_makes_both_topics(
    service_name: Callable[[], str], kafka_admin: AdminClient
) -> None:
    name = service_name()
    service = service_create(
        name=name, memory="32Gi", disk="600Gi", max_workers=4, partitions=8, sticky_key="u : d"
    )
    service.refresh_from_db()
    assert (service.memory_bytes, service.disk_bytes) == (32 * GiB, 600 * GiB)
    assert (service.memory, service.disk) == ("32Gi", "600Gi")
    assert service.sticky_key == "u:d"
    assert topic_partitions(kafka_admin, protocol.request_topic(name)) == 8
    assert topic_partitions(kafka_admin, protocol.dlq_topic(name)) == 8


def test_defaults_follow_memory_service(service_factory: Callable[..., Service]) -> None:
    service = service_factory(partitions=None)
    assert service.partitions == 64
    assert (service.min_workers, service.desired_workers, service.max_workers) == (1, 1, 1)
    assert (service.concurrency, service.timeout_seconds) == (16, 300)
    assert service.memory == "4Gi"


def test_partitions_default_grows_with_max_workers(service_factory: Callable[..., Service]) -> None:
    assert service_factory(partitions=None, max_workers=100).partitions == 100


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"name": "Not_Valid"}, "name"),
        ({"memory": "32Qi"}, "memory"),
        ({"disk": "-5Gi"}, "disk"),
        ({"sticky_key": "user id"}, "sticky_key"),
        ({"partitions": 2, "max_workers": 4}, "partitions"),
        ({"min_workers": 3, "max_workers": 2}, "min_workers"),
        ({"desired_workers": 5, "max_workers": 2}, "desired_workers"),
        ({"concurrency": 0}, "concurrency"),
        ({"provider": "aws"}, "provider"),
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
        service_factory(name="x", memory="lots", sticky_key="a::b")
    assert set(fields_of(exc)) == {"name", "memory", "sticky_key"}


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


def test_update_changes_sizes_and_scaling(service_factory: Callable[..., Service]) -> None:
    service = service_factory(max_workers=2)
    updated = service_update(
        service=service, data={"memory": "64Gi", "max_workers": 4, "desired_workers": 3}
    )
    updated.refresh_from_db()
    assert (updated.memory_bytes, updated.max_workers, updated.desired_workers) == (
        64 * GiB,
        4,
        3,
    )


def test_update_can_clear_the_sticky_key(service_factory: Callable[..., Service]) -> None:
    service = service_factory(sticky_key="user_id")
    assert service_update(service=service, data={"sticky_key": None}).sticky_key == ""


def test_partitions_are_fixed_after_create(service_factory: Callable[..., Service]) -> None:
    service = service_factory(partitions=4)
    assert service_update(service=service, data={"partitions": 4}).partitions == 4
    with pytest.raises(DomainError) as exc:
        service_update(service=service, data={"partitions": 8})
    assert exc.value.status == 422
    assert "fixed at creation" in exc.value.message
    assert list(fields_of(exc)) == ["partitions"]


def test_max_workers_cannot_pass_the_partitions(service_factory: Callable[..., Service]) -> None:
    service = service_factory(partitions=4)
    with pytest.raises(DomainError) as exc:
        service_update(service=service, data={"max_workers": 5})
    assert list(fields_of(exc)) == ["max_workers"]
    service.refresh_from_db()
    assert service.max_workers == 1


def test_update_refuses_unknown_fields(service_factory: Callable[..., Service]) -> None:
    with pytest.raises(DomainError) as exc:
        service_update(service=service_factory(), data={"name": "other"})
    assert list(fields_of(exc)) == ["name"]


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
