"""A service's Kafka principal against the real broker: made with the service, exactly its
ACLs, rotated with its workers, removed with the service. The SASL cases need a broker
with authentication (`scripts/services up` starts one; export what `scripts/services env`
prints); on a PLAINTEXT broker they are skipped and the PLAINTEXT case runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from django.test import Client

from apps.services.deployments import service_kafka_credentials_rotate
from apps.services.models import Service
from apps.services.principals import (
    kafka_principal_connection,
    kafka_principal_name,
    kafka_principal_remove,
)
from apps.services.services import service_delete
from apps.services.tokens import apitoken_create
from memrun.wire import protocol
from memrun.wire.kafka import KafkaConnection, kafka_client_config, kafka_connection_from_env
from tests.worker_daemon.harness import wait_for

pytestmark = pytest.mark.django_db
sasl_only = pytest.mark.skipif(
    not kafka_connection_from_env().authenticated,
    reason="the broker has no authentication (KAFKA_SECURITY_PROTOCOL unset)",
)


def acls_of(admin: AdminClient, user: str) -> set[tuple[str, str, str]]:
    every = AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        f"User:{user}",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    found = admin.describe_acls(every, request_timeout=10).result(timeout=20)
    return {(acl.restype.name, acl.name, acl.operation.name) for acl in found}


def login_error(connection: KafkaConnection) -> int | None:
    """None when `connection` logs in and lists topics; else the error's code."""
    errors: list[KafkaError] = []
    admin = AdminClient(kafka_client_config(connection, {"error_cb": errors.append}))
    try:
        admin.list_topics(timeout=10)
    except KafkaException:
        admin.poll(1)  # serves error_cb
        return next(
            (e.code() for e in errors if e.code() == KafkaError._AUTHENTICATION),
            KafkaError._TRANSPORT,
        )
    return None


@sasl_only
def test_a_new_service_gets_a_principal_with_exactly_its_acls(
    service_factory: Callable[..., Service], kafka_admin: AdminClient
) -> None:
    service = service_factory()
    name = service.name
    assert acls_of(kafka_admin, kafka_principal_name(name)) == {
        ("TOPIC", protocol.request_topic(name), "READ"),
        ("TOPIC", protocol.request_topic(name), "DESCRIBE"),
        ("GROUP", protocol.consumer_group(name), "READ"),
        ("TOPIC", protocol.dlq_topic(name), "WRITE"),
        ("TOPIC", protocol.dlq_topic(name), "DESCRIBE"),
    }
    connection = kafka_principal_connection(service=service)
    assert connection.sasl_username == f"svc-{name}"
    assert connection.sasl_password != kafka_connection_from_env().sasl_password
    assert login_error(connection) is None
    # It sees its own topics and no other.
    admin = AdminClient(kafka_client_config(connection))
    visible = set(admin.list_topics(timeout=10).topics)
    assert visible == {protocol.request_topic(name), protocol.dlq_topic(name)}


@sasl_only
def test_rotation_changes_the_password_and_rolls_the_workers(
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Any],
    user: Any,
) -> None:
    service = service_factory()
    live = deploy_settings(service, status="active")
    before = kafka_principal_connection(service=service)

    generation, deployment = service_kafka_credentials_rotate(service=service, created_by=user)

    service.refresh_from_db()
    assert generation == service.kafka_credential_generation == 2
    assert deployment is not None and deployment.version == live.version + 1
    assert (deployment.sha256, deployment.config) == (live.sha256, live.config)
    after = kafka_principal_connection(service=service)
    assert after.sasl_password != before.sasl_password
    assert login_error(after) is None
    # The broker applies the new credential asynchronously.
    wait_for(
        lambda: login_error(before) == KafkaError._AUTHENTICATION,
        timeout_s=30,
        what="the old password to be refused",
    )


@sasl_only
def test_delete_removes_the_user_and_its_acls(
    service_factory: Callable[..., Service], kafka_admin: AdminClient
) -> None:
    service = service_factory()
    connection = kafka_principal_connection(service=service)
    user = kafka_principal_name(service.name)
    assert acls_of(kafka_admin, user)

    service_delete(service=service)

    wait_for(lambda: acls_of(kafka_admin, user) == set(), timeout_s=30, what="no ACLs")
    with pytest.raises(KafkaException) as missing:
        kafka_admin.describe_user_scram_credentials([user])[user].result(timeout=20)
    assert missing.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND
    assert login_error(connection) == KafkaError._AUTHENTICATION


@sasl_only
def test_a_broker_that_lost_the_principal_heals_when_a_worker_spec_is_built(
    service_factory: Callable[..., Service], deploy_settings: Callable[..., Any]
) -> None:
    from apps.provisioning.specs import worker_spec_build
    from apps.workers.services import worker_create

    service = service_factory()
    deployment = deploy_settings(service)
    kafka_admin = AdminClient(kafka_client_config(kafka_connection_from_env()))
    user = kafka_principal_name(service.name)
    kafka_principal_remove(service=service.name)
    assert acls_of(kafka_admin, user) == set()

    worker, credential = worker_create(
        service=service, deployment=deployment, name=f"{service.name}-w", provider="local"
    )
    spec = worker_spec_build(
        worker=worker, credential=credential, service=service, deployment=deployment
    )

    assert spec.env["KAFKA_SASL_USERNAME"] == user
    assert spec.env["KAFKA_SASL_PASSWORD"] != kafka_connection_from_env().sasl_password
    assert len(acls_of(kafka_admin, user)) == 5
    assert login_error(kafka_connection_from_env(spec.env)) is None


def test_a_reader_cannot_rotate(service_factory: Callable[..., Service], viewer: Any) -> None:
    service = service_factory()
    _, secret = apitoken_create(user=viewer, name="reads")
    reader = Client(headers={"Authorization": f"Bearer {secret}"})
    refused = reader.post(f"/api/v1/services/{service.name}/rotate-credentials")
    assert refused.status_code == 403, refused.content
    assert "admin role" in refused.json()["message"]
    service.refresh_from_db()
    assert service.kafka_credential_generation == 1


def test_rotate_route_answers_with_the_generation(
    service_factory: Callable[..., Service], api_client: Client
) -> None:
    service = service_factory()
    response = api_client.post(f"/api/v1/services/{service.name}/rotate-credentials")
    assert response.status_code == 200, response.content
    assert response.json() == {"generation": 2, "version": None}
    missing = api_client.post("/api/v1/services/no-such-service/rotate-credentials")
    assert missing.status_code == 404


def test_without_authentication_workers_get_no_credentials(
    service_factory: Callable[..., Service], settings: Any
) -> None:
    service = service_factory()
    settings.KAFKA_SECURITY_PROTOCOL = "PLAINTEXT"
    env = kafka_principal_connection(service=service).env()
    assert env == {
        "KAFKA_BOOTSTRAP_SERVERS": settings.KAFKA_BOOTSTRAP_SERVERS,
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    }
