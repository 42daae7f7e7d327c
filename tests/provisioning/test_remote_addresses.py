"""A worker on another machine (provider hetzner) is told the appliance's remote addresses
(MEMRUN_REMOTE_*), and gets the Kafka CA certificate itself; a local one keeps the
appliance's own addresses. Same credentials either way."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import LazySettings
from django.test import TestCase

from apps.provisioning.specs import worker_spec_build
from apps.services.models import Service
from apps.workers.models import Worker
from memrun.wire.kafka import SASL_SSL, kafka_client_config, kafka_connection_from_env

pytestmark = pytest.mark.django_db

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def spec_env(service: Service, provider: str) -> dict[str, str]:
    worker = Worker.objects.create(
        service=service,
        name=f"{service.name}-{provider}",
        provider=provider,
        credential_hash=provider,
    )
    deployment = service.deployments.get()
    return worker_spec_build(
        worker=worker, credential="mrw_x", service=service, deployment=deployment
    ).env


def test_a_remote_worker_gets_the_remote_addresses_and_the_ca_itself(
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., object],
    settings: LazySettings,
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(PEM)
    settings.MEMRUN_REMOTE_CONTROL_PLANE_URL = "http://10.0.0.2:8000"
    settings.MEMRUN_REMOTE_KAFKA_BOOTSTRAP_SERVERS = "10.0.0.2:19094"
    settings.MEMRUN_REMOTE_KAFKA_SECURITY_PROTOCOL = SASL_SSL
    settings.MEMRUN_REMOTE_KAFKA_SSL_CA_LOCATION = str(ca)
    settings.MEMRUN_REMOTE_REDIS_ADDRESS = "10.0.0.2:16379"
    with TestCase.captureOnCommitCallbacks(execute=True):
        service = service_factory()
    deploy_settings(service, status="active")
    local, remote = spec_env(service, "local"), spec_env(service, "hetzner")

    assert local["MEMRUN_URL"] == settings.MEMRUN_CONTROL_PLANE_URL
    assert remote["MEMRUN_URL"] == "http://10.0.0.2:8000"
    assert local["KAFKA_BOOTSTRAP_SERVERS"] == settings.KAFKA_BOOTSTRAP_SERVERS
    assert remote["KAFKA_BOOTSTRAP_SERVERS"] == "10.0.0.2:19094"
    given, own = urlsplit(remote["REDIS_URL"]), urlsplit(local["REDIS_URL"])
    assert (given.hostname, given.port) == ("10.0.0.2", 16379)
    assert (given.username, given.password, given.path) == (own.username, own.password, own.path)
    if settings.KAFKA_SECURITY_PROTOCOL == "PLAINTEXT":
        # No principals on a broker without authentication: only the address moves.
        assert remote["KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
        return
    assert remote["KAFKA_SECURITY_PROTOCOL"] == SASL_SSL
    assert remote["KAFKA_SASL_USERNAME"] == local["KAFKA_SASL_USERNAME"]
    assert "KAFKA_SSL_CA_LOCATION" not in remote  # a path on the appliance means nothing there
    assert base64.b64decode(remote["KAFKA_SSL_CA_PEM_BASE64"]) == PEM
    config = kafka_client_config(kafka_connection_from_env(remote))
    assert config["ssl.ca.pem"] == PEM.decode() and "ssl.ca.location" not in config


def test_a_ca_that_is_not_base64_is_refused_with_its_variable_named() -> None:
    with pytest.raises(ValueError, match="KAFKA_SSL_CA_PEM_BASE64"):
        kafka_connection_from_env({"KAFKA_SSL_CA_PEM_BASE64": "not base64!"})
