"""Kafka's SASL_SSL listener for remote workers (`MEMRUN_KAFKA_TLS=1 scripts/services up`):
a client that trusts the appliance's CA connects; one that does not is refused in the TLS
handshake. Skipped when the broker runs without that listener."""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from memrun.wire.kafka import (
    SASL_SSL,
    KafkaConnection,
    kafka_client_config,
    kafka_connection_from_env,
)

TLS_BOOTSTRAP = os.environ.get("MEMRUN_KAFKA_TLS_BOOTSTRAP_SERVERS", "")
pytestmark = pytest.mark.skipif(
    not TLS_BOOTSTRAP, reason="Kafka runs without its TLS listener (MEMRUN_KAFKA_TLS=1)"
)


def over_tls(*, ca: str) -> KafkaConnection:
    return dataclasses.replace(
        kafka_connection_from_env(),
        bootstrap_servers=TLS_BOOTSTRAP,
        security_protocol=SASL_SSL,
        ssl_ca_location=ca,
    )


def errors_of(connection: KafkaConnection) -> tuple[list[int], list[str]]:
    """The error codes a client met, and the brokers it then saw (empty: none)."""
    errors: list[KafkaError] = []
    admin = AdminClient(kafka_client_config(connection, {"error_cb": errors.append}))
    try:
        brokers = [str(b) for b in admin.list_topics(timeout=10).brokers.values()]
    except KafkaException:
        admin.poll(1)  # serves error_cb
        brokers = []
    return [e.code() for e in errors], brokers


def test_a_client_with_the_appliances_ca_connects_over_sasl_ssl() -> None:
    codes, brokers = errors_of(over_tls(ca=os.environ["KAFKA_SSL_CA_LOCATION"]))
    assert brokers == [f"{TLS_BOOTSTRAP}/1"], codes


def test_a_client_without_the_ca_is_refused_in_the_handshake() -> None:
    codes, brokers = errors_of(over_tls(ca=""))
    assert brokers == []
    assert KafkaError._SSL in codes, codes


def test_the_ca_key_and_the_admin_password_stay_private() -> None:
    tls = Path(os.environ["KAFKA_SSL_CA_LOCATION"]).parent
    for secret in (tls / "ca.key", tls.parent / "admin-password"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((tls / "ca.pem").stat().st_mode) == 0o644


def test_a_remote_worker_given_the_ca_itself_connects_over_sasl_ssl() -> None:
    # What a Hetzner worker gets in its join answer: the CA's PEM, not a path.
    pem = Path(os.environ["KAFKA_SSL_CA_LOCATION"]).read_bytes()
    connection = dataclasses.replace(
        over_tls(ca=""), ssl_ca_pem_base64=base64.b64encode(pem).decode()
    )
    codes, brokers = errors_of(connection)
    assert brokers == [f"{TLS_BOOTSTRAP}/1"], codes
