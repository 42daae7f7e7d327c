"""Invoke: route payloads to their service's partitions by sticky key, and wait for replies.

The control plane's hot path, async end to end: a waiting caller is a future (woken by
the process's one outcome subscription, apps/services/broker.py), never a thread or a
Redis connection. In the steady state a request touches no database (the service's
invoke target is cached: apps/services/targets.py) and writes nothing but its Kafka
message (its id says where to find it: apps/services/requestids.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis
from asgiref.sync import async_to_sync
from django.conf import settings

from apps.common.errors import DomainError
from apps.common.permissions import Access, Role
from apps.services import broker
from apps.services.admission import admission
from apps.services.requestids import request_id_new, request_id_parse
from apps.services.targets import InvokeTarget, invoke_target
from memrun.errors import StickyKeyError
from memrun.wire import protocol, redact_urls

MAX_WAIT_S = 300.0


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


def wait_seconds(wait: float) -> float:
    """`wait` when it is a wait the API allows; else 422."""
    if not 0 <= wait <= MAX_WAIT_S:
        raise DomainError(
            f"wait must be between 0 and {MAX_WAIT_S:g} seconds, got {wait:g}",
            status=422,
            details={"fields": {"wait": [f"between 0 and {MAX_WAIT_S:g}"]}},
        )
    return wait


def invoke_status(states: list[RequestState]) -> int:
    """200 when every request is done, 202 while any is still queued."""
    return 200 if all(state.status == "done" for state in states) else 202


broker.listener.on_done.append(admission.answered)


def _payload(body: bytes) -> Any:
    return _json(body, limit=protocol.MAX_PAYLOAD_BYTES, what="the payload")


def batch_payloads(body: bytes) -> list[Any]:
    """The payloads of an invoke-batch body: a JSON array."""
    limit = settings.MEMRUN_INVOKE_BATCH_MAX * protocol.MAX_PAYLOAD_BYTES
    payloads = _json(body, limit=limit, what="the batch")
    if not isinstance(payloads, list):
        raise DomainError(
            "the body of invoke-batch is a JSON array of payloads, e.g. [{...}, {...}]",
            status=422,
            details={"body": type(payloads).__name__},
        )
    return payloads


def _json(body: bytes, *, limit: int, what: str) -> Any:
    if len(body) > limit:
        raise DomainError(
            f"{what} is {len(body)} bytes; the limit is {limit}. "
            "Put large inputs in S3 and pass their URL",
            status=413,
            details={"size": len(body), "limit": limit},
        )
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise DomainError(
            f"{what} is not valid JSON: {exc}", status=400, details={"body": str(exc)}
        ) from None


def _key(target: InvokeTarget, payload: Any, index: int | None = None) -> str | None:
    """The Kafka key for `payload`; 422 naming the field when the payload lacks one."""
    if target.sticky is None:
        return None
    try:
        return target.sticky.key_for(payload)
    except StickyKeyError as exc:
        if index is None:
            raise DomainError(exc.message, status=422, details=exc.details) from None
        raise DomainError(
            f"payload {index}: {exc.message}", status=422, details={**exc.details, "index": index}
        ) from None


def _message(
    target: InvokeTarget, request_id: str, key: str | None, value: bytes, attempt: int
) -> dict:
    submitted_ms = protocol.now_ms()
    return {
        "topic": protocol.request_topic(target.service),
        "value": value,
        "key": key.encode() if key is not None else None,
        "headers": protocol.encode_headers(
            request_id=request_id,
            deadline_ms=submitted_ms + target.timeout_seconds * 1000,
            attempt=attempt,
            submitted_ms=submitted_ms,
        ),
    }


async def requests_submit(
    *,
    target: InvokeTarget,
    items: list[tuple[str | None, bytes]],
    request_ids: list[str],
    attempt: int = 1,
) -> None:
    """Produce each (Kafka key, payload json) under its request id (requestids.py: the
    id is what lets GET /requests/{id} find it); return once Kafka has them all. 429
    when the service's backlog is full. `attempt` > 1 marks a replay of a failed
    request."""
    admission.admit(
        service=target.service, request_ids=request_ids, timeout_s=target.timeout_seconds
    )
    try:
        await broker.produce_many(_messages(target, items, request_ids, attempt))
    except broker.BrokerDown as exc:
        raise _broker_down(exc.reason) from None


def _requests_submit_watched(
    *, target: InvokeTarget, items: list[tuple[str | None, bytes]], waiter: _Waiters
) -> None:
    """`requests_submit` for a caller that waits for the outcomes: the delivery reports
    go to `waiter` (a refusal fails the wait); nothing here waits for them."""
    admission.admit(
        service=target.service, request_ids=waiter.request_ids, timeout_s=target.timeout_seconds
    )
    messages = _messages(target, items, waiter.request_ids, 1)
    try:
        waiter.deliveries = broker.produce_watched(messages, waiter.futures)
    except broker.BrokerDown as exc:
        raise _broker_down(exc.reason) from None


def _messages(
    target: InvokeTarget,
    items: list[tuple[str | None, bytes]],
    request_ids: list[str],
    attempt: int,
) -> list[dict]:
    return [
        _message(target, request_id, key, value, attempt)
        for request_id, (key, value) in zip(request_ids, items, strict=True)
    ]


def request_produce(
    *, service: str, key: str | None, body: bytes, timeout_seconds: int, attempt: int = 1
) -> str:
    """Produce `body` with Kafka key `key` to the service's request topic as a new
    request; return its id once Kafka has it.
    For sync callers (dead letter replays); invoke itself is async."""
    target = InvokeTarget(
        service=service, sticky=None, timeout_seconds=timeout_seconds, refusal=None
    )
    request_id = request_id_new(service=service, caller=None)
    async_to_sync(requests_submit)(
        target=target, items=[(key, body)], request_ids=[request_id], attempt=attempt
    )
    return request_id


async def service_invoke(
    *, name: str, body: bytes, wait_s: float, queue: bool, caller: str
) -> RequestState:
    """Queue `body` (JSON) for service `name`, and wait up to `wait_s` seconds for its
    outcome unless the caller or the service is past its bound of waiting callers."""
    target = await invoke_target(name=name)
    key = _key(target, _payload(body))
    if target.refusal is not None and not queue:
        raise target.refusal
    return (await _submit_and_wait(target, [(key, body)], wait_s=wait_s, caller=caller))[0]


async def service_invoke_batch(
    *, name: str, payloads: list[Any], wait_s: float, queue: bool, caller: str
) -> list[RequestState]:
    """Queue each payload (routed by its own sticky key) and wait up to `wait_s` seconds
    for all outcomes; the states come back in the payloads' order."""
    limit = settings.MEMRUN_INVOKE_BATCH_MAX
    if not 1 <= len(payloads) <= limit:
        raise DomainError(
            f"a batch holds 1 to {limit} payloads, got {len(payloads)}",
            status=422,
            details={"count": len(payloads), "limit": limit},
        )
    target = await invoke_target(name=name)
    items = []
    for index, payload in enumerate(payloads):
        value = json.dumps(payload, separators=(",", ":")).encode()
        if len(value) > protocol.MAX_PAYLOAD_BYTES:
            raise DomainError(
                f"payload {index} is {len(value)} bytes; the limit is {protocol.MAX_PAYLOAD_BYTES}",
                status=413,
                details={"index": index, "size": len(value), "limit": protocol.MAX_PAYLOAD_BYTES},
            )
        items.append((_key(target, payload, index), value))
    if target.refusal is not None and not queue:
        raise target.refusal
    return await _submit_and_wait(target, items, wait_s=wait_s, caller=caller)


async def _submit_and_wait(
    target: InvokeTarget, items: list[tuple[str | None, bytes]], *, wait_s: float, caller: str
) -> list[RequestState]:
    request_ids = [request_id_new(service=target.service, caller=caller) for _ in items]
    with admission.waiting(service=target.service, caller=caller) as may_wait:
        if not may_wait or wait_s <= 0:
            await requests_submit(target=target, items=items, request_ids=request_ids)
            return [RequestState(request_id, "queued") for request_id in request_ids]
        waiter = _Waiters(target.service)
        try:
            # Wake-ups are registered before the produce, so none can be missed.
            for request_id in request_ids:
                waiter.add(request_id)
            _requests_submit_watched(target=target, items=items, waiter=waiter)
            return await waiter.wait(wait_s)
        finally:
            waiter.close()


class _Waiters:
    """Futures for some request ids of one service, in order, unregistered on close (also
    when the caller disconnects and its task is cancelled). When this caller produced
    them, `deliveries` are their reports: a refusal fails the wait (503), and a request
    still queued when the wait ends is answered as queued only once Kafka has it."""

    def __init__(self, service: str) -> None:
        self._service = service
        self.request_ids: list[str] = []
        self.futures: list[asyncio.Future[bytes]] = []
        self.deliveries: list[broker.Delivery] = []

    def add(self, request_id: str) -> None:
        try:
            future = broker.listener.register(self._service, request_id)
        except redis.RedisError as exc:
            raise _redis_down(exc) from None
        self.request_ids.append(request_id)
        self.futures.append(future)

    async def wait(self, wait_s: float) -> list[RequestState]:
        if wait_s > 0:
            await asyncio.wait(self.futures, timeout=wait_s, return_when=asyncio.FIRST_EXCEPTION)
        states = []
        for index, (request_id, future) in enumerate(
            zip(self.request_ids, self.futures, strict=True)
        ):
            if future.done():
                try:
                    outcome = future.result()
                except broker.BrokerDown as exc:
                    raise _broker_down(exc.reason) from None
                states.append(RequestState(request_id, "done", protocol.Outcome.from_json(outcome)))
                continue
            if self.deliveries:
                try:
                    await self.deliveries[index].confirmed()
                except broker.BrokerDown as exc:
                    raise _broker_down(exc.reason) from None
            states.append(RequestState(request_id, "queued"))
        return states

    def close(self) -> None:
        for request_id, future in zip(self.request_ids, self.futures, strict=True):
            broker.listener.unregister(self._service, request_id, future)
            if future.done() and not future.cancelled():
                future.exception()  # a refusal seen too late to matter: not an error to log
            future.cancel()


async def request_wait(
    *, request_id: str, wait_s: float, access: Access, caller: str
) -> RequestState:
    """The request's state, waiting up to `wait_s` seconds for its outcome; 404 for an
    id never submitted (or expired); 403 unless `caller` may see it (`request_get`)."""
    service = _request_service(request_id=request_id, access=access, caller=caller)
    waiter = _Waiters(service)
    try:
        if wait_s > 0:
            waiter.add(request_id)
        state = await _request_state(service=service, request_id=request_id)
        if state.status == "done" or wait_s <= 0:
            return state
        return (await waiter.wait(wait_s))[0]
    finally:
        waiter.close()


async def request_get(*, request_id: str, access: Access, caller: str) -> RequestState:
    """ "done" with the outcome, "queued" while pending; 404 for an id never submitted.
    Only for a caller with the read role on the request's service, or for the caller
    that submitted it while it may still invoke that service; else 403."""
    service = _request_service(request_id=request_id, access=access, caller=caller)
    return await _request_state(service=service, request_id=request_id)


def _request_service(*, request_id: str, access: Access, caller: str) -> str:
    """The request's service, from its id; 404 for an id never submitted (or expired),
    403 unless `caller` may see it: with the read role on the request's service, or as
    the token that submitted it while it may still invoke that service."""
    ref = request_id_parse(request_id)
    if ref is None:
        raise DomainError(
            f"no request {request_id!r}: it never existed or it expired "
            f"({protocol.REPLY_TTL_S // 3600} h after submission)",
            status=404,
            details={"request_id": request_id},
        )
    service = ref.service
    if access.allows(Role.READ, service):
        return service
    if ref.submitted_by(caller) and access.allows(Role.INVOKE, service):
        return service
    raise DomainError(
        f"{access.who} may not see request {request_id}: it needs the read role on the "
        "request's service, or to be the token that submitted it",
        status=403,
        details={"request_id": request_id, "role": str(Role.READ)},
    )


async def _request_state(*, service: str, request_id: str) -> RequestState:
    try:
        outcome_raw = await broker.redis_async().get(protocol.outcome_key(service, request_id))
    except redis.RedisError as exc:
        raise _redis_down(exc) from None
    if outcome_raw is not None:
        return RequestState(request_id, "done", protocol.Outcome.from_json(outcome_raw))
    return RequestState(request_id, "queued")


# A stream that follows a request: its first event is the request's state, its last the
# outcome ("done") or, past the follow time, "timeout" (reconnect to go on following).
# Between them a comment line every EVENTS_KEEPALIVE_S keeps proxies and clients from
# dropping an idle connection.
EVENTS_KEEPALIVE_S = 15.0
EVENTS_MAX_S = 3600.0


def follow_seconds(follow: float) -> float:
    """`follow` when the events stream allows it; else 422."""
    if not 0 < follow <= EVENTS_MAX_S:
        raise DomainError(
            f"wait must be more than 0 and at most {EVENTS_MAX_S:g} seconds, got {follow:g}",
            status=422,
            details={"fields": {"wait": [f"more than 0, at most {EVENTS_MAX_S:g}"]}},
        )
    return follow


async def request_events(
    *, request_id: str, follow_s: float, access: Access, caller: str
) -> AsyncIterator[bytes]:
    """The request's server-sent events (see EVENTS_KEEPALIVE_S). The same 403/404 as
    `request_get` come before the stream starts; the wake-up is registered first, so an
    outcome that lands in between is not missed. A caller that hangs up ends the stream."""
    service = _request_service(request_id=request_id, access=access, caller=caller)
    waiter = _Waiters(service)
    try:
        waiter.add(request_id)
        state = await _request_state(service=service, request_id=request_id)
    except BaseException:
        waiter.close()
        raise
    return _events(waiter, state, follow_s)


async def _events(waiter: _Waiters, state: RequestState, follow_s: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + follow_s
    try:
        yield _event(state.status, state.to_api())
        while state.status != "done":
            left = deadline - loop.time()
            if left <= 0:
                yield _event("timeout", state.to_api())
                return
            [state] = await waiter.wait(min(EVENTS_KEEPALIVE_S, left))
            yield _event("done", state.to_api()) if state.status == "done" else b": waiting\n\n"
    finally:
        waiter.close()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _redis_down(exc: Exception) -> DomainError:
    where = redact_urls(settings.REDIS_URL)
    return DomainError(
        f"Redis at {where} is unreachable ({redact_urls(str(exc))}); "
        "start it with `bash scripts/services up` or set REDIS_URL",
        status=503,
        details={"redis_url": where},
    )


def _broker_down(reason: str) -> DomainError:
    return DomainError(
        f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not take the request ({reason}); "
        "start it with `bash scripts/services up` or set KAFKA_BOOTSTRAP_SERVERS",
        status=503,
        details={"kafka": settings.KAFKA_BOOTSTRAP_SERVERS, "reason": reason},
    )
