"""The wire contract between the control plane, Kafka, Redis and workers.

Every name a message or key carries is defined here once; the API (apps/services), the
worker daemon and the SDK client import it, so the two ends cannot drift apart.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, is_dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

# Kafka. `murmur2_random` is the Java client's default partitioner: kcat, a Java producer
# or any client left on defaults puts a key on the same partition as memrun does.
PARTITIONER = "murmur2_random"
HEADER_REQUEST_ID = "memrun-request-id"
HEADER_DEADLINE_MS = "memrun-deadline-ms"
HEADER_ATTEMPT = "memrun-attempt"
HEADER_SUBMITTED_MS = "memrun-submitted-ms"

# Redis. The outcome is a plain key so any number of readers can GET it; the reply list
# only wakes a blocked waiter (BLPOP) and carries no data of its own.
REPLY_TTL_S = 24 * 3600
MAX_PAYLOAD_BYTES = 1024 * 1024


def request_topic(service: str) -> str:
    return f"memrun.requests.{service}"


def dlq_topic(service: str) -> str:
    return f"memrun.dlq.{service}"


def consumer_group(service: str) -> str:
    return f"memrun-{service}"


# Every key and channel a worker touches lies under its service's prefix,
# `memrun:{service}:`, so one Redis ACL key pattern (`~memrun:{service}:*`) and one channel
# pattern (`&memrun:{service}:*`) bound what a service's worker can reach. Names cannot
# hold ':', so one service's prefix never covers another's. What only the control plane
# touches (request records, invalidations) lies outside every service's prefix.


def service_key_prefix(service: str) -> str:
    """The prefix of every Redis key and channel of `service`'s workers."""
    return f"memrun:{service}:"


def reply_key(service: str, request_id: str) -> str:
    """Redis list pushed once when the outcome is stored: BLPOP it to wait."""
    return f"memrun:{service}:reply:{request_id}"


def outcome_key(service: str, request_id: str) -> str:
    """Redis string holding the outcome JSON; first writer wins (SET NX)."""
    return f"memrun:{service}:outcome:{request_id}"


def done_channel(service: str) -> str:
    """Redis pub/sub channel on which a worker publishes `{request_id} {outcome json}`
    when it stores a first outcome: the control plane waits on it with one subscription
    per process instead of one blocked connection per caller."""
    return f"memrun:{service}:done"


# What a worker daemon sends to Redis (worker_daemon/main.py, worker_daemon/outcomes.py):
# PING at start, EXISTS, and SCRIPT LOAD + EVALSHA of its reply script, whose SET, RPUSH,
# EXPIRE and PUBLISH Redis checks against the same ACL user as the EVALSHA itself.
WORKER_REDIS_COMMANDS = (
    "ping",
    "exists",
    "evalsha",
    "script|load",
    "set",
    "rpush",
    "expire",
    "publish",
)


def worker_redis_acl(service: str) -> list[str]:
    """The Redis ACL rules (after `reset on >password`) of `service`'s workers' user: its
    own keys and channels, and only the commands a worker sends."""
    prefix = service_key_prefix(service)
    return [f"~{prefix}*", f"&{prefix}*", "-@all", *(f"+{c}" for c in WORKER_REDIS_COMMANDS)]


# psubscribe pattern for every service's done channel.
DONE_CHANNEL_PATTERN = "memrun:*:done"


def done_channel_service(channel: str) -> str:
    """The service whose done channel `channel` is (inverse of `done_channel`)."""
    return channel.removeprefix("memrun:").removesuffix(":done")


def new_request_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Outcome:
    """What one handled request produced: a JSON result, or an error with its type."""

    request_id: str
    ok: bool
    result: Any = None
    error: dict[str, str] | None = None
    worker: str = ""
    attempt: int = 1
    partition: int = -1
    offset: int = -1
    duration_ms: float = 0.0
    finished_ms: int = field(default_factory=now_ms)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        # Shallow, not `asdict`: it deep-copies the result, the worker's costliest step
        # per request. Nested dataclasses still become objects, through `_json_default`.
        fields = {name: getattr(self, name) for name in _OUTCOME_FIELDS}
        return json.dumps(fields, separators=(",", ":"), default=_json_default).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Outcome:
        return cls(**json.loads(raw))


_OUTCOME_FIELDS = tuple(f.name for f in dataclass_fields(Outcome))


def _json_default(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


def encode_headers(
    *, request_id: str, deadline_ms: int, attempt: int = 1, submitted_ms: int | None = None
) -> list[tuple[str, bytes]]:
    return [
        (HEADER_REQUEST_ID, request_id.encode()),
        (HEADER_DEADLINE_MS, str(deadline_ms).encode()),
        (HEADER_ATTEMPT, str(attempt).encode()),
        (HEADER_SUBMITTED_MS, str(submitted_ms or now_ms()).encode()),
    ]


def decode_headers(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Header name -> text; a message from a foreign producer may have none at all."""
    return {name: (value or b"").decode("utf-8", "replace") for name, value in headers or ()}
