"""Invoke: route a payload to its service's partition by sticky key, and wait for the reply.

The produce and the wait are the control plane's hot path: one Kafka producer and one
Redis pool per process, no database query beyond reading the service.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from confluent_kafka import KafkaError, Message, Producer
from django.conf import settings

from apps.common.errors import DomainError
from memrun.errors import StickyKeyError
from memrun.wire import protocol, redact_urls
from memrun.wire.sticky import StickyTemplate

_DELIVERY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RequestState:
    request_id: str
    status: str  # "queued" or "done"
    outcome: protocol.Outcome | None = None

    def to_api(self) -> dict[str, Any]:
        body: dict[str, Any] = {"request_id": self.request_id, "status": self.status}
        if self.outcome is not None:
            outcome = self.outcome
            body |= {
                "ok": outcome.ok,
                "result": outcome.result,
                "error": outcome.error,
                "worker": outcome.worker,
                "duration_ms": outcome.duration_ms,
                "attempt": outcome.attempt,
                "meta": outcome.meta,
            }
        return body


class _Delivery:
    """Producer delivery reports, handed to the thread waiting for each one."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        self.error = error
        self.done.set()


class _Clients:
    """Lazily built, process-wide broker and Redis clients (one per gunicorn worker)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._redis: redis.Redis | None = None

    def producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = Producer(
                    {
                        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
                        "partitioner": protocol.PARTITIONER,
                        "enable.idempotence": True,
                        "linger.ms": 1,
                        "message.timeout.ms": int(_DELIVERY_TIMEOUT_S * 1000),
                        "socket.nagle.disable": True,
                    }
                )
                threading.Thread(
                    target=self._serve_delivery_reports, name="memrun-producer", daemon=True
                ).start()
            return self._producer

    def _serve_delivery_reports(self) -> None:
        assert self._producer is not None
        while True:
            self._producer.poll(1.0)

    def redis(self) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                # No socket timeout: a BLPOP legitimately blocks for the caller's whole
                # wait; connecting still fails fast when Redis is down.
                self._redis = redis.Redis.from_url(
                    settings.REDIS_URL,
                    max_connections=256,
                    health_check_interval=30,
                    socket_timeout=None,
                    socket_connect_timeout=5,
                )
            return self._redis


clients = _Clients()


def sticky_key_for(*, template: str | None, payload: Any) -> str | None:
    """The Kafka key for `payload`; 422 naming the field when the payload lacks one."""
    if not template:
        return None
    try:
        return StickyTemplate.parse(template).key_for(payload)
    except StickyKeyError as exc:
        raise DomainError(exc.message, status=422, details=exc.details) from None


def request_submit(
    *, service: str, sticky_template: str | None, body: bytes, timeout_seconds: int
) -> str:
    """Queue `body` (JSON) for `service`; return the request id once Kafka has it."""
    if len(body) > protocol.MAX_PAYLOAD_BYTES:
        raise DomainError(
            f"the payload is {len(body)} bytes; the limit is {protocol.MAX_PAYLOAD_BYTES}. "
            "Put large inputs in S3 and pass their URL",
            status=413,
            details={"size": len(body), "limit": protocol.MAX_PAYLOAD_BYTES},
        )
    try:
        payload = json.loads(body or b"null")
    except ValueError as exc:
        raise DomainError(
            f"the payload is not valid JSON: {exc}", status=400, details={"body": str(exc)}
        ) from None
    key = sticky_key_for(template=sticky_template, payload=payload)
    return request_produce(service=service, key=key, body=body, timeout_seconds=timeout_seconds)


def request_produce(
    *, service: str, key: str | None, body: bytes, timeout_seconds: int, attempt: int = 1
) -> str:
    """Produce `body` with Kafka key `key` to the service's request topic as a new
    request (its record kept for GET /requests/{id}); return its id once Kafka has it.
    `attempt` > 1 marks a replay of a failed request."""
    request_id = protocol.new_request_id()
    submitted_ms = protocol.now_ms()
    record = {"service": service, "key": key, "submitted_ms": submitted_ms}
    _redis_call(
        lambda r: r.set(
            protocol.request_key(request_id), json.dumps(record), ex=protocol.REPLY_TTL_S
        )
    )
    delivery = _Delivery()
    try:
        clients.producer().produce(
            protocol.request_topic(service),
            value=body,
            key=key.encode() if key is not None else None,
            headers=protocol.encode_headers(
                request_id=request_id,
                deadline_ms=submitted_ms + timeout_seconds * 1000,
                attempt=attempt,
                submitted_ms=submitted_ms,
            ),
            on_delivery=delivery,
        )
    except BufferError:
        raise _broker_down("the producer queue is full") from None
    if not delivery.done.wait(_DELIVERY_TIMEOUT_S + 1.0):
        raise _broker_down("no delivery report")
    if delivery.error is not None:
        raise _broker_down(str(delivery.error))
    return request_id


def request_wait(*, request_id: str, wait_s: float, known_pending: bool = False) -> RequestState:
    """The request's state, blocking up to `wait_s` seconds for its outcome.

    `known_pending` skips the first look-up for a request this process just submitted.
    """
    if not known_pending:
        state = request_get(request_id=request_id)
        if state.status == "done":
            return state
    if wait_s <= 0:
        return RequestState(request_id, "queued")
    deadline = time.monotonic() + wait_s
    reply = protocol.reply_key(request_id)
    while (remaining := deadline - time.monotonic()) > 0:
        # BLPOP only wakes us; the outcome itself is read from its own key. The token goes
        # back on the list so that any other waiter on the same id wakes too.
        woke = _redis_call(lambda r: r.blpop([reply], max(round(remaining, 3), 0.001)))
        if woke is None:
            break
        outcome_raw = _redis_call(lambda r: _rewake_and_read(r, reply, request_id))
        if outcome_raw is not None:
            return RequestState(request_id, "done", protocol.Outcome.from_json(outcome_raw))
    return RequestState(request_id, "queued")


def _rewake_and_read(r: redis.Redis, reply: str, request_id: str) -> bytes | None:
    pipe = r.pipeline(transaction=False)
    pipe.rpush(reply, b"1").expire(reply, protocol.REPLY_TTL_S)
    pipe.get(protocol.outcome_key(request_id))
    outcome_raw: bytes | None = pipe.execute()[-1]
    return outcome_raw


def request_get(*, request_id: str) -> RequestState:
    """ "done" with the outcome, "queued" while pending; 404 for an id never submitted."""
    outcome_raw, record = _redis_call(
        lambda r: r.mget(protocol.outcome_key(request_id), protocol.request_key(request_id))
    )
    if outcome_raw is not None:
        return RequestState(request_id, "done", protocol.Outcome.from_json(outcome_raw))
    if record is None:
        raise DomainError(
            f"no request {request_id!r}: it never existed or its record expired "
            f"({protocol.REPLY_TTL_S // 3600} h after submission)",
            status=404,
            details={"request_id": request_id},
        )
    return RequestState(request_id, "queued")


def _redis_call(call: Any) -> Any:
    try:
        return call(clients.redis())
    except redis.RedisError as exc:
        where = redact_urls(settings.REDIS_URL)
        raise DomainError(
            f"Redis at {where} is unreachable ({redact_urls(str(exc))}); "
            "start it with `bash scripts/services up` or set REDIS_URL",
            status=503,
            details={"redis_url": where},
        ) from None


def _broker_down(reason: str) -> DomainError:
    return DomainError(
        f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not take the request ({reason}); "
        "start it with `bash scripts/services up` or set KAFKA_BOOTSTRAP_SERVERS",
        status=503,
        details={"kafka": settings.KAFKA_BOOTSTRAP_SERVERS, "reason": reason},
    )
