"""The ASGI application `memrun up` serves: the fast lane answers invoke and request
polling exactly as the ninja views do, passes everything else to Django, and lets go of
a caller that disconnects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.test import Client

from apps.services import broker
from apps.services.models import ApiToken
from apps.services.schemas import RequestOut
from memrun_site.asgi import application
from memrun_site.fastlane import fast_call

pytestmark = pytest.mark.django_db(transaction=True)


def scope(method: str, path: str, query: str, token: str, body: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }


async def call_async(request: dict[str, Any], body: bytes) -> tuple[int, dict[str, str], Any]:
    app = ApplicationCommunicator(application, request)
    await app.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await app.receive_output(timeout=60)
    content = b""
    while True:
        message = await app.receive_output(timeout=60)
        content += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await app.wait(timeout=5)
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, json.loads(content)


def call(method: str, path: str, query: str, token: str, payload: Any = None) -> Any:
    if isinstance(payload, bytes):
        body = payload
    else:
        body = b"" if payload is None else json.dumps(payload).encode()
    return async_to_sync(call_async)(scope(method, path, query, token, body), body)


@pytest.fixture
def token(api_token: tuple[ApiToken, str], api_client: Client) -> str:
    """A token this process knows (so its calls take the fast lane)."""
    assert api_client.get("/api/v1/tokens").status_code == 200
    return api_token[1]


def test_known_tokens_on_the_async_routes_take_the_fast_lane(token: str) -> None:
    fast = fast_call(scope("POST", "/api/v1/services/s/invoke", "wait=1&queue=true", token))
    assert fast is not None and fast.queue and fast.wait_s == 1
    assert fast_call(scope("GET", "/api/v1/requests/abc", "", token)) is not None
    assert fast_call(scope("POST", "/api/v1/services/s/invoke-batch", "", token)) is not None
    for passed_on in (
        scope("GET", "/api/v1/services/s/invoke", "", token),  # another method
        scope("POST", "/api/v1/services/s/invoke", "wait=soon", token),  # odd parameters
        scope("POST", "/api/v1/services/s/invoke", "queue=maybe", token),
        scope("POST", "/api/v1/services/s/invoke", "extra=1", token),
        scope("POST", "/api/v1/services/s/invoke", "", "mr_unknown"),  # a token not known
        scope("GET", "/api/v1/services", "", token),  # another route
    ):
        assert fast_call(passed_on) is None


def test_the_fast_lane_answers_as_the_views_do(
    token: str, api_client: Client, served: str, service_name: Callable[[], str]
) -> None:
    never = service_name()
    created = api_client.post("/api/v1/services", {"name": never}, content_type="application/json")
    assert created.status_code == 201
    invoke = f"/api/v1/services/{served}/invoke"
    status, _, body = call("POST", invoke, "wait=30&queue=true", token, {"user": "f", "op": "echo"})
    assert status == 200 and body["result"]["key"] == "f" and body["status"] == "done"
    RequestOut.model_validate(body)
    assert set(body) <= set(RequestOut.model_fields)
    polled = call("GET", f"/api/v1/requests/{body['request_id']}", "wait=5", token)
    assert polled[:1] == (200,) and polled[2] == body
    batch = call(
        "POST", f"{invoke}-batch", "queue=true", token, [{"user": "a"}, {"user": "b", "op": "echo"}]
    )
    assert batch[0] == 200 and [r["status"] for r in batch[2]["results"]] == ["done", "done"]

    # The same refusals, in the same shape, as through Django and ninja.
    cases: list[tuple[str, str, Any]] = [
        (f"/api/v1/services/{never}/invoke", "", {"user": "u"}),  # 409
        (f"/api/v1/services/{served}/invoke", "queue=true", {"op": "echo"}),  # 422
        (f"/api/v1/services/{served}/invoke", "queue=true", b"{not json"),  # 400
        ("/api/v1/services/no-such-service/invoke", "", {"user": "u"}),  # 404
        (f"/api/v1/services/{served}/invoke", "wait=-1", {"user": "u"}),  # 422
        (f"/api/v1/services/{served}/invoke-batch", "queue=true", {"user": "u"}),  # 422
    ]
    for path, query, payload in cases:
        fast_status, _, fast_body = call("POST", path, query, token, payload)
        data = payload if isinstance(payload, bytes) else json.dumps(payload)
        view = api_client.post(f"{path}?{query}", data, content_type="application/json")
        assert (fast_status, fast_body) == (view.status_code, view.json()), path
    unknown = call("GET", "/api/v1/requests/0123456789abcdef0123456789abcdef", "", token)
    assert unknown[0] == 404


def test_a_429_carries_retry_after_in_the_fast_lane(
    token: str, api_client: Client, service_name: Callable[[], str], settings: Any
) -> None:
    settings.MEMRUN_INVOKE_BACKLOG_PER_SERVICE = 1
    name = service_name()
    created = api_client.post("/api/v1/services", {"name": name}, content_type="application/json")
    assert created.status_code == 201
    path = f"/api/v1/services/{name}/invoke"
    assert call("POST", path, "wait=0&queue=true", token, {"user": "u"})[0] == 202
    status, headers, body = call("POST", path, "wait=0&queue=true", token, {"user": "u"})
    assert status == 429 and int(headers["retry-after"]) >= 1 and body["details"]["limit"] == 1


def test_a_caller_that_disconnects_holds_nothing(
    token: str, api_client: Client, service_name: Callable[[], str]
) -> None:
    name = service_name()
    created = api_client.post("/api/v1/services", {"name": name}, content_type="application/json")
    assert created.status_code == 201
    body = json.dumps({"user": "gone"}).encode()
    request = scope("POST", f"/api/v1/services/{name}/invoke", "wait=300&queue=true", token, body)

    async def invoke_then_leave() -> tuple[int, int]:
        app = ApplicationCommunicator(application, request)
        await app.send_input({"type": "http.request", "body": body, "more_body": False})
        deadline = asyncio.get_running_loop().time() + 30
        while broker.listener.waiting() == 0:  # its wait has begun
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        waiting = broker.listener.waiting()
        await app.send_input({"type": "http.disconnect"})
        await app.wait(timeout=10)  # the app returns: nothing is left waiting on our side
        return waiting, broker.listener.waiting()

    waiting, after = async_to_sync(invoke_then_leave)()
    assert waiting >= 1 and after == waiting - 1
