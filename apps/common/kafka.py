"""The control plane's Kafka clients: every producer, consumer and admin client of the
Django apps is configured here, from the `KAFKA_*` settings, as the control plane's own
principal (memrun.wire.kafka builds the librdkafka config)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from memrun.wire.kafka import KafkaConnection, kafka_client_config


def control_plane_kafka() -> KafkaConnection:
    """The broker, as the control plane (read per call: tests override the settings)."""
    return KafkaConnection(
        bootstrap_servers=settings.KAFKA_BOOTSTRAP_SERVERS,
        security_protocol=settings.KAFKA_SECURITY_PROTOCOL,
        sasl_mechanism=settings.KAFKA_SASL_MECHANISM,
        sasl_username=settings.KAFKA_SASL_USERNAME,
        sasl_password=settings.KAFKA_SASL_PASSWORD,
        ssl_ca_location=settings.KAFKA_SSL_CA_LOCATION,
    )


def control_plane_kafka_config(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A librdkafka config for the control plane's principal, with `extra` on top."""
    return kafka_client_config(control_plane_kafka(), extra)
