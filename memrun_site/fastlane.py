"""The fast lane: invoke and request polling by a known bearer token, as plain ASGI.

Through Django's ASGI handler an invoke paid about ten thread hops (each `MiddlewareMixin`
hook and the request signals run in a thread made for the request), then ninja's
parameter and response validation: together several times the cost of the invoke itself
(bench/bench_invoke_http.py). This lane serves the common case of the three async routes
whole: a bearer token this process already knows, and `wait`/`queue` given plainly. It
calls the same service functions as the ninja views in apps/services/api.py, which stay the
contract (OpenAPI, sessions, and every case this lane passes on: unknown tokens, odd
parameters, other methods), and answers with the same bodies and error shape. A caller
that disconnects cancels its wait. It checks the same roles as those views, from the
same cached token look-up: a revoked token or a changed grant is seen at once (an
invalidation message), at worst within MEMRUN_LOOKUP_CACHE_TTL_S.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings

from apps.common.errors import DomainError
from apps.common.permissions import Access, Role
from apps.services import invoke
from apps.services.auth import token_caller
from apps.services.tokens import apitoken_cached_holder

logger = logging.getLogger(__name__)

ROUTE = re.compile(
    r"^/api/v1/(?:services/(?P<service>[^/]+)/(?P<op>invoke|invoke-batch)"
    r"|requests/(?P<request_id>[^/]+))$"
)
_BOOLS = {"true": True, "false": False, "1": True, "0": False}


@dataclass(frozen=True)
class Call:
    op: str  # "invoke", "invoke-batch" or "request"
    target: str  # the service, or the request id
    caller: str
    access: Access  # the token's, from the same cached look-up as the ninja routes'
    wait_s: float
    queue: bool


def fast_call(scope: dict[str, Any]) -> Call | None:
    """The call when this lane can serve it whole; None passes it to Django."""
    if scope["type"] != "http":
        return None
    match = ROUTE.match(scope["path"])
    if match is None:
        return None
    op = match["op"] or "request"
    if scope["method"] != ("GET" if op == "request" else "POST"):
        return None
    token = _bearer(scope["headers"])
    holder = None if token is None else apitoken_cached_holder(secret=token)
    if token is None or holder is None:
        return None
    params = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
    try:
        wait_s = float(params.pop("wait", "0" if op == "request" else "30"))
    except ValueError:
        return None
    queue = _BOOLS.get(params.pop("queue", "false").lower()) if op != "request" else False
    if queue is None or params:
        return None
    return Call(
        op=op,
        target=match["service"] or match["request_id"],
        caller=token_caller(token),
        access=holder.access,
        wait_s=wait_s,
        queue=queue,
    )


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token if scheme.lower() == "bearer" and token else None
    return None


async def serve(call: Call, receive: Any, send: Any) -> None:
    try:
        body = await _read_body(receive, limit=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
    except DomainError as exc:
        await _send(send, exc.status, {"message": exc.message, "details": exc.details}, {})
        return
    if body is None:
        return
    # The answer runs in this task; a watcher cancels it when the caller leaves. (One task
    # more per request, not two and an asyncio.wait: a measurable part of an invoke.)
    this = asyncio.current_task()
    assert this is not None
    left = False

    def caller_left(_: asyncio.Task[None]) -> None:
        nonlocal left
        left = True
        this.cancel()

    watcher = asyncio.get_running_loop().create_task(_disconnected(receive))
    watcher.add_done_callback(caller_left)
    try:
        answer = await _answer(call, body)
    except asyncio.CancelledError:
        if not left:
            raise
        this.uncancel()  # the caller left: stop waiting for it, and answer nobody
        return
    finally:
        watcher.remove_done_callback(caller_left)
        watcher.cancel()
    await _send(send, *answer)


async def _send(send: Any, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
    content = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *((name.lower().encode(), value.encode()) for name, value in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


async def _answer(call: Call, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    try:
        wait_s = invoke.wait_seconds(call.wait_s)
        if call.op != "request":  # what `needs_async(Role.INVOKE)` checks on the ninja routes
            call.access.require(Role.INVOKE, call.target)
        if call.op == "invoke":
            state = await invoke.service_invoke(
                name=call.target, body=body, wait_s=wait_s, queue=call.queue, caller=call.caller
            )
            return invoke.invoke_status([state]), state.to_api(), {}
        if call.op == "invoke-batch":
            states = await invoke.service_invoke_batch(
                name=call.target,
                payloads=invoke.batch_payloads(body),
                wait_s=wait_s,
                queue=call.queue,
                caller=call.caller,
            )
            return invoke.invoke_status(states), {"results": [s.to_api() for s in states]}, {}
        state = await invoke.request_wait(
            request_id=call.target, wait_s=wait_s, access=call.access, caller=call.caller
        )
        return 200, state.to_api(), {}
    except DomainError as exc:
        return exc.status, {"message": exc.message, "details": exc.details}, exc.headers
    except Exception as exc:
        logger.exception("unhandled error in the fast lane (%s %s)", call.op, call.target)
        return 500, _internal_error(exc), {}


def _internal_error(exc: Exception) -> dict[str, Any]:
    return {
        "message": "internal error; the server log has the details",
        "details": {"type": type(exc).__name__},
    }


async def _read_body(receive: Any, *, limit: int) -> bytes | None:
    """The body, or None when the caller left; 413 past `limit` bytes."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise DomainError(
                f"the body is over {limit} bytes; send fewer payloads per batch",
                status=413,
                details={"limit": limit},
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
