"""How every memrun Kafka client connects: one place that turns the connection settings
(`KAFKA_BOOTSTRAP_SERVERS`, `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`,
`KAFKA_SSL_CA_LOCATION` or `KAFKA_SSL_CA_PEM_BASE64`, what `scripts/services env` prints)
into a librdkafka config.

The control plane, the worker daemon, the benchmarks and the tests all build their
producers, consumers and admin clients from `kafka_client_config`, so a broker that turns on
SASL or TLS needs no change anywhere else.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PLAINTEXT = "PLAINTEXT"
SASL_PLAINTEXT = "SASL_PLAINTEXT"
SASL_SSL = "SASL_SSL"
SECURITY_PROTOCOLS = (PLAINTEXT, SASL_PLAINTEXT, SASL_SSL)
DEFAULT_MECHANISM = "SCRAM-SHA-512"

# The environment names of KafkaConnection's fields.
ENV_NAMES = {
    "bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS",
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
    "ssl_ca_pem_base64": "KAFKA_SSL_CA_PEM_BASE64",
}


@dataclass(frozen=True)
class KafkaConnection:
    """Where a Kafka broker is and who connects to it. `security_protocol` PLAINTEXT means
    no authentication (the credentials are then ignored); SASL_SSL verifies the broker's
    certificate against `ssl_ca_location` (a PEM file) or `ssl_ca_pem_base64` (the PEM
    itself, base64: how a remote worker, which has none of the appliance's files, gets the
    appliance's CA in one line of its environment) when given, else the system's CAs."""

    bootstrap_servers: str
    security_protocol: str = PLAINTEXT
    sasl_mechanism: str = DEFAULT_MECHANISM
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    ssl_ca_pem_base64: str = ""

    def __post_init__(self) -> None:
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.authenticated and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD"
            )
        if self.ssl_ca_pem_base64:
            try:
                base64.b64decode(self.ssl_ca_pem_base64, validate=True)
            except binascii.Error:
                raise ValueError("KAFKA_SSL_CA_PEM_BASE64 is not base64") from None

    @property
    def authenticated(self) -> bool:
        return self.security_protocol != PLAINTEXT

    def as_principal(self, *, username: str, password: str) -> KafkaConnection:
        """The same broker and transport, as another principal."""
        return KafkaConnection(
            bootstrap_servers=self.bootstrap_servers,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=username,
            sasl_password=password,
            ssl_ca_location=self.ssl_ca_location,
            ssl_ca_pem_base64=self.ssl_ca_pem_base64,
        )

    def env(self) -> dict[str, str]:
        """The environment that `kafka_connection_from_env` reads back into this."""
        values = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.authenticated:
            values |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_username": self.sasl_username,
                "sasl_password": self.sasl_password,
            }
        if self.security_protocol == SASL_SSL and self.ssl_ca_location:
            values["ssl_ca_location"] = self.ssl_ca_location
        if self.security_protocol == SASL_SSL and self.ssl_ca_pem_base64:
            values["ssl_ca_pem_base64"] = self.ssl_ca_pem_base64
        return {ENV_NAMES[name]: value for name, value in values.items()}


def kafka_connection_from_env(
    env: Mapping[str, str] | None = None, *, default_bootstrap: str = "127.0.0.1:9092"
) -> KafkaConnection:
    """The connection `KAFKA_*` variables describe; PLAINTEXT when no protocol is set.
    ValueError names the variable that is wrong."""
    env = os.environ if env is None else env
    values = {name: env.get(var, "") for name, var in ENV_NAMES.items()}
    return KafkaConnection(
        bootstrap_servers=values["bootstrap_servers"] or default_bootstrap,
        security_protocol=values["security_protocol"].upper() or PLAINTEXT,
        sasl_mechanism=values["sasl_mechanism"] or DEFAULT_MECHANISM,
        sasl_username=values["sasl_username"],
        sasl_password=values["sasl_password"],
        ssl_ca_location=values["ssl_ca_location"],
        ssl_ca_pem_base64=values["ssl_ca_pem_base64"],
    )


def kafka_client_config(
    connection: KafkaConnection, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The librdkafka config for a client on `connection`, with `extra` (the client's own
    settings: `group.id`, `partitioner`, timeouts, callbacks) on top. The only place a
    memrun client sets `bootstrap.servers` or its credentials."""
    config: dict[str, Any] = {
        "bootstrap.servers": connection.bootstrap_servers,
        "security.protocol": connection.security_protocol.lower(),
    }
    if connection.authenticated:
        config |= {
            "sasl.mechanism": connection.sasl_mechanism,
            "sasl.username": connection.sasl_username,
            "sasl.password": connection.sasl_password,
        }
    if connection.security_protocol == SASL_SSL and connection.ssl_ca_location:
        config["ssl.ca.location"] = connection.ssl_ca_location
    if connection.security_protocol == SASL_SSL and connection.ssl_ca_pem_base64:
        config["ssl.ca.pem"] = base64.b64decode(connection.ssl_ca_pem_base64).decode()
    return config | dict(extra or {})
