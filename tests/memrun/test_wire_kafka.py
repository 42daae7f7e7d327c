"""memrun.wire.kafka: the one place a Kafka client config is built."""

from __future__ import annotations

import pytest

from memrun.errors import ConfigError
from memrun.wire.kafka import KafkaConnection, kafka_client_config, kafka_connection_from_env
from worker_daemon.settings import WorkerSettings


def test_plaintext_by_default_carries_no_credentials() -> None:
    connection = kafka_connection_from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1"})
    config = kafka_client_config(connection, {"group.id": "g"})
    assert config == {"bootstrap.servers": "k:1", "security.protocol": "plaintext", "group.id": "g"}
    assert connection.env() == {
        "KAFKA_BOOTSTRAP_SERVERS": "k:1",
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    }


def test_sasl_ssl_round_trips_through_the_environment() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k:1",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_USERNAME": "svc-a",
        "KAFKA_SASL_PASSWORD": "pw",
        "KAFKA_SSL_CA_LOCATION": "/ca.pem",
    }
    connection = kafka_connection_from_env(env)
    assert kafka_client_config(connection) == {
        "bootstrap.servers": "k:1",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-a",
        "sasl.password": "pw",
        "ssl.ca.location": "/ca.pem",
    }
    assert kafka_connection_from_env(connection.env()) == connection
    other = connection.as_principal(username="svc-b", password="pw2")
    assert (other.sasl_username, other.ssl_ca_location) == ("svc-b", "/ca.pem")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, "is not one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs KAFKA_SASL_USERNAME"),
    ],
)
def test_a_wrong_setting_is_named(env: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        kafka_connection_from_env(env)
    with pytest.raises(ConfigError, match=says):
        WorkerSettings.from_env({"MEMRUN_SERVICE": "svc", "MEMRUN_PACKAGE_PATH": "/p", **env})


def test_the_worker_reads_its_principal_from_the_same_names() -> None:
    settings = WorkerSettings.from_env(
        {
            "MEMRUN_SERVICE": "svc",
            "MEMRUN_PACKAGE_PATH": "/p",
            "KAFKA_BOOTSTRAP_SERVERS": "k:1",
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "svc-a",
            "KAFKA_SASL_PASSWORD": "secret-pw",
        }
    )
    assert settings.kafka == KafkaConnection(
        bootstrap_servers="k:1",
        security_protocol="SASL_PLAINTEXT",
        sasl_username="svc-a",
        sasl_password="secret-pw",
    )
    assert "secret-pw" not in repr(settings)
