"""Each service's own Redis ACL user: what its workers connect as, never the default user
(the control plane's and Celery's), I8.

A service's user `svc-{name}` reaches only keys and channels under its service's prefix
(`memrun:{name}:`, memrun.wire.protocol) and runs only the commands a worker daemon sends:
PING at start, EXISTS, and SCRIPT LOAD + EVALSHA of the reply script, whose SET, RPUSH,
EXPIRE and PUBLISH Redis checks against the same user (a script runs with its caller's
permissions, on the keys it declares). No SELECT (unless the appliance's own database is
not 0: then that one database only), no KEYS/SCAN, no CLIENT/CONFIG/ACL/FLUSH*, and none of
Celery's keys (`celery`, `_kombu.*`, `unacked*`) nor the control plane's request records.

The password is derived, not stored: HMAC-SHA256 of the appliance's secret key over the
service's row id, name and credential generation (`kafka_credential_generation`, which
rotates the service's Kafka password too). A database dump then holds no Redis
password, a Redis that restarted (users live in its memory; no aclfile to keep in step)
gets every user back from the next reconcile pass with nothing read but the row, and a
service deleted and created again under the same name (a new row id) gets a new one.
Rotating is that generation's bump (apps/services/deployments.py:
service_kafka_credentials_rotate, which rolls the workers).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from urllib.parse import quote, urlsplit, urlunsplit

import redis
from django.conf import settings
from django.db import transaction

from apps.services.models import Service
from memrun.wire.protocol import worker_redis_acl

logger = logging.getLogger(__name__)

USERNAME_PREFIX = "svc-"
_TIMEOUT_S = 5.0


def redis_username(service_name: str) -> str:
    return f"{USERNAME_PREFIX}{service_name}"


def redis_password(*, service: Service) -> str:
    """The current password of `service`'s user (see the module's docstring)."""
    generation = service.kafka_credential_generation
    message = f"memrun-redis-user\0{service.pk}\0{service.name}\0{generation}"
    return hmac.new(settings.SECRET_KEY.encode(), message.encode(), hashlib.sha256).hexdigest()


def redis_user_rules(*, service: Service) -> list[str]:
    """The ACL SETUSER rules of `service`'s user: from nothing (`reset`) to exactly its
    rights, so a re-ensure also takes back whatever was added by hand."""
    rules = ["reset", "on", f">{redis_password(service=service)}"]
    rules += worker_redis_acl(service.name)
    db = _db_of(settings.REDIS_URL)
    if db:
        rules.append(f"+select|{db}")
    return rules


def redis_user_ensure(*, service: Service) -> None:
    """Create or update `service`'s user (idempotent); the client's errors propagate."""
    # Raw, not redis-py's `acl_setuser`: that has no first-argument rules (`+select|1`).
    _client(settings.REDIS_URL).execute_command(
        "ACL", "SETUSER", redis_username(service.name), *redis_user_rules(service=service)
    )


def redis_user_ensure_quietly(*, service: Service) -> None:
    """`redis_user_ensure` where a Redis that is away must not fail the caller (a
    service's creation): it is logged, and the reconcile pass and every worker spec
    ensure the user before any worker needs it. Run inside the creating transaction,
    like the topics: a user left by a create that rolls back reaches only the keys of a
    service that does not exist, under a password nothing derives again (the row id)."""
    try:
        redis_user_ensure(service=service)
    except redis.RedisError as exc:
        logger.warning("redis user of %s not ensured yet (%s)", service.name, exc)


def redis_user_delete(*, service_name: str) -> None:
    """Remove `service_name`'s user; Redis drops its open connections with it. Users are
    removed one by one, never by listing and pruning: several appliances (and test runs)
    may share one Redis, and another's services are not in our database."""
    _client(settings.REDIS_URL).execute_command("ACL", "DELUSER", redis_username(service_name))


def redis_user_delete_on_commit(*, service_name: str) -> None:
    """`redis_user_delete` once the transaction commits. A Redis that is away then leaves
    a user that reaches only the deleted service's keys; a service created again under
    the name is a new row, whose user's ensure resets it with a new password."""

    def delete() -> None:
        try:
            redis_user_delete(service_name=service_name)
        except redis.RedisError as exc:
            logger.warning("redis user of deleted %s not removed (%s)", service_name, exc)

    transaction.on_commit(delete)


def worker_redis_url(*, service: Service, address: str = "") -> str:
    """REDIS_URL for `service`'s workers: the appliance's Redis, as the service's user; at
    `address` (host:port, for workers on other machines) when given."""
    parts = urlsplit(settings.REDIS_URL)
    if address:
        where = address
    else:
        host = parts.hostname or "127.0.0.1"
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        where = host + (f":{parts.port}" if parts.port else "")
    user = quote(redis_username(service.name), safe="")
    password = quote(redis_password(service=service), safe="")
    netloc = f"{user}:{password}@{where}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _db_of(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


@functools.lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S)
