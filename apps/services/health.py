"""Can the control plane reach what it depends on: the database, Redis and Kafka.

Used by `GET /api/v1/health` and by `memrun up` before it starts anything.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.db import DatabaseError, connection

from apps.services.topics import kafka_admin

PROBE_TIMEOUT_S = 2.0
HOW_TO_START = "start the development services with `bash scripts/services up`"


@dataclass(frozen=True)
class Probe:
    ok: bool
    target: str  # where it looked, without credentials
    detail: str
    elapsed_ms: float


def health_check(*, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Probe]:
    """Probe the three at once; each gives up after about `timeout_s`."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="memrun-health") as pool:
        redis_probe = pool.submit(
            _probe, _redacted(settings.REDIS_URL), lambda: _ping_redis(timeout_s)
        )
        kafka_probe = pool.submit(
            _probe, settings.KAFKA_BOOTSTRAP_SERVERS, lambda: _ping_kafka(timeout_s)
        )
        # Django's connections belong to their thread: the database is probed on this one.
        database = _probe(_database_target(), _ping_database)
        return {"database": database, "redis": redis_probe.result(), "kafka": kafka_probe.result()}


def health_problems(report: dict[str, Probe]) -> list[str]:
    """One sentence per unreachable component: what, where, why, and what to do."""
    fixes = {
        "database": "check DATABASE_URL, and that the database server runs",
        "redis": f"{HOW_TO_START}, or set REDIS_URL",
        "kafka": f"{HOW_TO_START}, or set KAFKA_BOOTSTRAP_SERVERS",
    }
    return [
        f"{name} at {probe.target} is unreachable ({probe.detail}): {fixes[name]}"
        for name, probe in report.items()
        if not probe.ok
    ]


def _probe(target: str, ping: Callable[[], str]) -> Probe:
    started = time.perf_counter()
    try:
        detail, ok = ping(), True
    except Exception as exc:  # any failure is the answer, not an error of the check
        lines = str(exc).strip().splitlines()
        detail, ok = (lines[0] if lines else type(exc).__name__), False
    return Probe(ok, target, detail, round((time.perf_counter() - started) * 1000, 1))


def _ping_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        # Leave no broken connection behind for the rest of the request.
        connection.close()
        raise
    return f"{connection.vendor} ok"


# One client per (address, timeout) per process: a health check that built its own Kafka
# client and Redis connection each time cost more than the rest of it, and under load
# missed its own one-second bound (tests/test_frontdoor_load.py).
@functools.lru_cache(maxsize=8)
def _redis_client(url: str, timeout_s: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)


@functools.lru_cache(maxsize=8)
def _kafka_client(bootstrap: str, timeout_s: float) -> AdminClient:
    return kafka_admin(timeout_s=timeout_s)


def _ping_redis(timeout_s: float) -> str:
    _redis_client(settings.REDIS_URL, timeout_s).ping()
    return "ok"


def _ping_kafka(timeout_s: float) -> str:
    try:
        admin = _kafka_client(settings.KAFKA_BOOTSTRAP_SERVERS, timeout_s)
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConnectionError(exc.args[0].str() if exc.args else str(exc)) from None
    return f"{len(metadata.brokers)} broker(s)"


def _database_target() -> str:
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        return f"sqlite:{db['NAME']}"
    host = db.get("HOST") or "localhost"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{connection.vendor}://{host}{port}/{db['NAME']}"


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
