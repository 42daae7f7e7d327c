"""A service's own Kafka principal, `User:svc-{name}`: the SCRAM user its workers log in
as, and the ACLs that let it do its work and nothing else.

Its workers consume the request topic in the service's group and write dead letters, so
the principal may READ (hence DESCRIBE) `memrun.requests.{name}` and the group
`memrun-{name}`, and WRITE and DESCRIBE `memrun.dlq.{name}` (DESCRIBE: the worker checks
at start that the topic exists). The KIP-848 group protocol needs no more: its
ConsumerGroupHeartbeat asks READ on the group and DESCRIBE on the subscribed topic. It
may not read another service's topics or group, read its own DLQ, create topics or touch
ACLs; the broker's StandardAuthorizer denies whatever no ACL allows.

The password is derived, not stored: HMAC-SHA256 of the appliance's SECRET_KEY over the
service's row id, name and `kafka_credential_generation`. Nothing to encrypt or lose, a
service re-created under an old name gets a new password (a new row id), rotating is a
counter bump, and a broker that lost its users is healed by ensuring again.

With a broker without authentication (KAFKA_SECURITY_PROTOCOL unset or PLAINTEXT) every
function here does nothing: there are no principals to make.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import logging
import time
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)
from django.conf import settings

from apps.common.errors import DomainError
from apps.common.kafka import control_plane_kafka
from apps.services.models import Service
from apps.services.topics import kafka_admin
from memrun.wire import protocol
from memrun.wire.kafka import SASL_SSL, KafkaConnection

logger = logging.getLogger(__name__)

PRINCIPAL_PREFIX = "svc-"
# Kafka's minimum for SCRAM-SHA-512 is 4096.
SCRAM_ITERATIONS = 8192


def kafka_principal_name(service: str) -> str:
    return f"{PRINCIPAL_PREFIX}{service}"


def kafka_principal_password(*, service: Service) -> str:
    message = f"kafka:{service.pk}:{service.name}:{service.kafka_credential_generation}"
    key = settings.SECRET_KEY.encode()
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def kafka_principal_connection(*, service: Service, remote: bool = False) -> KafkaConnection:
    """How the service's workers connect: the control plane's broker and transport, as the
    service's principal (or, on a broker without authentication, as nobody). A `remote`
    worker (another machine) uses the MEMRUN_REMOTE_KAFKA_* address and transport, and gets
    the CA certificate itself rather than a path on this machine."""
    connection = control_plane_kafka()
    if not connection.authenticated:
        if remote:
            return dataclasses.replace(
                connection,
                bootstrap_servers=settings.MEMRUN_REMOTE_KAFKA_BOOTSTRAP_SERVERS
                or connection.bootstrap_servers,
            )
        return connection
    principal = connection.as_principal(
        username=kafka_principal_name(service.name),
        password=kafka_principal_password(service=service),
    )
    return _remote(principal) if remote else principal


def _remote(connection: KafkaConnection) -> KafkaConnection:
    protocol = settings.MEMRUN_REMOTE_KAFKA_SECURITY_PROTOCOL or connection.security_protocol
    ca_location = settings.MEMRUN_REMOTE_KAFKA_SSL_CA_LOCATION or connection.ssl_ca_location
    ca_pem_base64 = ""
    if protocol == SASL_SSL and ca_location:
        ca_pem_base64 = base64.b64encode(Path(ca_location).read_bytes()).decode()
    return dataclasses.replace(
        connection,
        bootstrap_servers=settings.MEMRUN_REMOTE_KAFKA_BOOTSTRAP_SERVERS
        or connection.bootstrap_servers,
        security_protocol=protocol,
        ssl_ca_location="",
        ssl_ca_pem_base64=ca_pem_base64,
    )


def kafka_principal_acls(service: str) -> list[AclBinding]:
    """Everything the service's principal may do."""
    principal = f"User:{kafka_principal_name(service)}"
    allowed = [
        (ResourceType.TOPIC, protocol.request_topic(service), AclOperation.READ),
        (ResourceType.TOPIC, protocol.request_topic(service), AclOperation.DESCRIBE),
        (ResourceType.GROUP, protocol.consumer_group(service), AclOperation.READ),
        (ResourceType.TOPIC, protocol.dlq_topic(service), AclOperation.WRITE),
        (ResourceType.TOPIC, protocol.dlq_topic(service), AclOperation.DESCRIBE),
    ]
    return [
        AclBinding(
            kind,
            name,
            ResourcePatternType.LITERAL,
            principal,
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for kind, name, operation in allowed
    ]


def kafka_principal_ensure(*, service: Service) -> None:
    """Make (or set again) the service's SCRAM user with its current password, and its
    ACLs, and return once the broker applies them (KRaft publishes them asynchronously;
    after `MEMRUN_KAFKA_TIMEOUT_S`, go on: a worker that logs in too early restarts).
    Idempotent. DomainError 503 when the broker cannot be reached or refuses."""
    if not control_plane_kafka().authenticated:
        return
    timeout_s = settings.MEMRUN_KAFKA_TIMEOUT_S
    admin = kafka_admin(timeout_s=timeout_s)
    user = kafka_principal_name(service.name)
    upsert = UserScramCredentialUpsertion(
        user,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
        kafka_principal_password(service=service).encode(),
    )
    try:
        admin.alter_user_scram_credentials([upsert], request_timeout=timeout_s)[user].result(
            timeout=timeout_s * 2
        )
        for future in admin.create_acls(
            kafka_principal_acls(service.name), request_timeout=timeout_s
        ).values():
            future.result(timeout=timeout_s * 2)
    except (KafkaException, TimeoutError) as exc:
        raise _refused(exc, f"could not set the Kafka principal {user}") from None
    _wait_applied(admin, user, len(kafka_principal_acls(service.name)), timeout_s)


def kafka_principal_remove(*, service: str) -> None:
    """Delete the service's SCRAM user and every ACL that names it. A user already gone is
    fine. DomainError 503 when the broker cannot be reached or refuses."""
    if not control_plane_kafka().authenticated:
        return
    timeout_s = settings.MEMRUN_KAFKA_TIMEOUT_S
    admin = kafka_admin(timeout_s=timeout_s)
    user = kafka_principal_name(service)
    deletion = UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)
    try:
        for future in admin.delete_acls([_every_acl(user)], request_timeout=timeout_s).values():
            future.result(timeout=timeout_s * 2)
        try:
            admin.alter_user_scram_credentials([deletion], request_timeout=timeout_s)[user].result(
                timeout=timeout_s * 2
            )
        except KafkaException as exc:
            if _code(exc) != KafkaError.RESOURCE_NOT_FOUND:
                raise
    except (KafkaException, TimeoutError) as exc:
        raise _refused(exc, f"could not remove the Kafka principal {user}") from None
    logger.info("removed Kafka principal %s and its ACLs", user)


def _wait_applied(admin: AdminClient, user: str, acls: int, timeout_s: float) -> None:
    """Return once the broker shows `user`'s SCRAM credential and `acls` ACLs of it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            found = admin.describe_acls(_every_acl(user), request_timeout=timeout_s).result(
                timeout=timeout_s
            )
            if len(found) >= acls:
                admin.describe_user_scram_credentials([user])[user].result(timeout=timeout_s)
                return
        except KafkaException:
            pass  # not there yet
        time.sleep(0.05)
    logger.warning("Kafka principal %s is not applied by the broker yet; going on", user)


def _every_acl(user: str) -> AclBindingFilter:
    return AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        f"User:{user}",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def _code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def _refused(exc: Exception, what: str) -> DomainError:
    error = exc.args[0] if exc.args else None
    reason = error.str() if isinstance(error, KafkaError) else str(exc) or "timed out"
    return DomainError(
        f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} {what} ({reason}); start it with "
        "`bash scripts/services up`, check KAFKA_SASL_USERNAME is its super user, then retry",
        status=503,
        details={"kafka": settings.KAFKA_BOOTSTRAP_SERVERS, "reason": reason},
    )
