"""Invoke end to end: the API routes by sticky key through the real Kafka to a real worker
process and hands back its answer; the SDK Client does the same over HTTP."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client

from apps.services.models import Service
from apps.services.requestids import request_id_parse
from memrun import ApiError, HandlerError, RequestTimeout
from memrun import Client as MemrunClient
from memrun.wire.protocol import MAX_PAYLOAD_BYTES
from tests.worker_daemon.harness import WorkerProcess, make_package, wait_for, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def invoke(client: Client, name: str, payload: object, wait: float = 30) -> tuple[int, dict]:
    """Invoke with `queue`: these services' workers run by hand, not as deployed workers."""
    response = client.post(
        f"/api/v1/services/{name}/invoke?wait={wait}&queue=true",
        json.dumps(payload),
        content_type="application/json",
    )
    return response.status_code, response.json()


def test_invoke_waits_for_the_workers_answer(api_client: Client, served: str) -> None:
    status, body = invoke(api_client, served, {"user": "u1", "op": "echo", "n": 7})
    assert status == 200, body
    assert body["status"] == "done" and body["ok"] is True
    assert body["result"]["echo"] == {"user": "u1", "op": "echo", "n": 7}
    assert body["result"]["key"] == "u1"
    assert body["worker"] == "w1"
    assert body["attempt"] == 1
    ref = request_id_parse(body["request_id"])
    assert ref is not None and ref.service == served


def test_a_handler_error_comes_back_as_an_error_outcome(api_client: Client, served: str) -> None:
    status, body = invoke(api_client, served, {"user": "u1", "op": "raise", "message": "boom"})
    assert status == 200, body
    assert body["ok"] is False
    assert "boom" in body["error"]["message"]


def test_submit_then_poll(api_client: Client, served: str) -> None:
    status, body = invoke(api_client, served, {"user": "u2", "op": "echo"}, wait=0)
    assert status == 202 and body["status"] == "queued"
    request_id = body["request_id"]
    polled = api_client.get(f"/api/v1/requests/{request_id}?wait=30").json()
    assert polled["status"] == "done" and polled["result"]["key"] == "u2"
    # The outcome stays readable by any number of readers.
    again = api_client.get(f"/api/v1/requests/{request_id}").json()
    assert again == polled


def test_a_missing_sticky_field_is_a_422_naming_it(api_client: Client, served: str) -> None:
    status, body = invoke(api_client, served, {"op": "echo"})
    assert status == 422
    assert "'user'" in body["message"]
    assert body["details"]["field"] == "user"


def test_an_oversized_payload_is_a_413(api_client: Client, served: str) -> None:
    status, body = invoke(api_client, served, {"user": "u", "blob": "x" * MAX_PAYLOAD_BYTES})
    assert status == 413
    assert "limit" in body["message"]


def test_bad_json_and_bad_wait_are_refused(api_client: Client, served: str) -> None:
    response = api_client.post(
        f"/api/v1/services/{served}/invoke", b"{not json", content_type="application/json"
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["message"]
    status, body = invoke(api_client, served, {"user": "u"}, wait=-1)
    assert status == 422 and "wait" in body["message"]


def test_unknown_service_and_request_are_404(api_client: Client) -> None:
    status, body = invoke(api_client, "no-such-service", {"user": "u"})
    assert status == 404 and "no-such-service" in body["message"]
    response = api_client.get("/api/v1/requests/0123456789abcdef0123456789abcdef")
    assert response.status_code == 404


def test_the_sdk_client_round_trips_over_http(
    live_server, api_token, service_name, deploy_settings, kafka_bootstrap, redis_url, tmp_path
) -> None:
    client = MemrunClient(live_server.url, api_token[1])
    name = service_name()
    api = Client(headers={"Authorization": f"Bearer {api_token[1]}"})
    created = api.post("/api/v1/services", {"name": name}, content_type="application/json")
    assert created.status_code == 201, created.content
    deploy_settings(Service.objects.get(name=name), sticky_key="user")
    request_id = client.submit(name, {"user": "early", "op": "echo"}, queue=True)
    package = make_package(tmp_path / "pkg", service=name)
    env = worker_env(
        service=name, bootstrap=kafka_bootstrap, redis_url=redis_url, cache_root=tmp_path / "c"
    )
    worker = WorkerProcess(
        service=name, package=package, worker_id="w9", env=env, log_path=tmp_path / "w9.log"
    )
    try:
        # Queued before any worker existed, served once one joined: nothing was lost.
        early = wait_for(lambda: client.result(request_id, wait=5).done, what="early request")
        assert early
        assert client.result(request_id).result["key"] == "early"
        assert (
            client.invoke(name, {"user": "u", "op": "echo", "n": 1}, queue=True)["echo"]["n"] == 1
        )
        with pytest.raises(HandlerError, match="boom"):
            client.invoke(name, {"user": "u", "op": "raise", "message": "boom"}, queue=True)
    finally:
        worker.stop()
    with pytest.raises(RequestTimeout) as timed_out:
        client.invoke(name, {"user": "u", "op": "echo"}, wait=0.2, queue=True)
    ref = request_id_parse(timed_out.value.details["request_id"])
    assert ref is not None and ref.service == name


def test_a_wait_longer_than_the_redis_client_timeout_still_gets_the_answer(
    api_client: Client, served: str
) -> None:
    # The handler holds its slot for 6 s (its own BLPOP on a gate nobody opens): longer
    # than redis-py's default socket timeout, which once turned such waits into 503s.
    status, body = invoke(
        api_client, served, {"user": "slow", "op": "block", "ns": served, "block_s": 6}
    )
    assert status == 200, body
    assert body["result"] == {"released": False}


def _follow(secret: str, path: str) -> tuple[int, list[tuple[str, dict]], bytes]:
    """GET `path` through the ASGI handler (as uvicorn serves it): (status, the events as
    (name, data), the raw body)."""

    async def read() -> tuple[int, bytes]:
        # Per request: AsyncClient(headers=...) does not reach the ASGI scope's headers.
        response = await AsyncClient().get(path, headers={"Authorization": f"Bearer {secret}"})
        if not response.streaming:
            return response.status_code, response.content
        return response.status_code, b"".join([chunk async for chunk in response])

    status, body = async_to_sync(read)()
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line[:1] != ":")
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return status, events, body


def test_a_request_followed_as_server_sent_events_ends_with_its_outcome(
    api_client: Client, api_token: tuple, served: str
) -> None:
    # Held by the handler until its gate opens, so the stream starts with the request queued.
    status, body = invoke(
        api_client, served, {"user": "sse", "op": "block", "ns": served, "block_s": 3}, wait=0
    )
    assert status == 202
    request_id = body["request_id"]
    status, events, raw = _follow(api_token[1], f"/api/v1/requests/{request_id}/events?wait=60")
    assert status == 200
    assert [name for name, _ in events] == ["queued", "done"], raw
    assert events[0][1] == {"request_id": request_id, "status": "queued"}
    done = events[1][1]
    assert done["status"] == "done" and done["result"] == {"released": False}
    # Once done, the stream is the outcome alone, the same as a poll answers.
    status, events, _ = _follow(api_token[1], f"/api/v1/requests/{request_id}/events")
    assert events == [("done", api_client.get(f"/api/v1/requests/{request_id}").json())]


def test_a_followed_request_past_wait_ends_with_a_timeout_event(
    api_client: Client, api_token: tuple, served: str
) -> None:
    status, body = invoke(
        api_client, served, {"user": "sse2", "op": "block", "ns": served, "block_s": 20}, wait=0
    )
    request_id = body["request_id"]
    status, events, raw = _follow(api_token[1], f"/api/v1/requests/{request_id}/events?wait=0.5")
    assert status == 200
    assert [name for name, _ in events] == ["queued", "timeout"], raw
    assert events[1][1]["status"] == "queued"


def test_following_an_unknown_request_or_with_a_bad_wait_is_refused_before_streaming(
    api_token: tuple,
) -> None:
    status, events, raw = _follow(api_token[1], "/api/v1/requests/nope/events")
    assert status == 404 and not events and b"no request 'nope'" in raw
    status, events, raw = _follow(api_token[1], "/api/v1/requests/nope/events?wait=0")
    assert status == 422 and b"wait must be" in raw


def test_the_sdk_client_follows_a_request_to_its_outcome_over_one_connection(
    asgi_url: str, api_client: Client, api_token: tuple, served: str
) -> None:
    client = MemrunClient(asgi_url, api_token[1])
    status, body = invoke(
        api_client, served, {"user": "sdk", "op": "block", "ns": served, "block_s": 2}, wait=0
    )
    assert status == 202
    followed = client.follow(body["request_id"], wait=60)
    assert followed.done and followed.result == {"released": False}
    assert followed == client.result(body["request_id"])
    with pytest.raises(ApiError) as unknown:
        client.follow("nope")
    assert unknown.value.status == 404


def test_request_ids_carry_their_service_and_submitter_signed() -> None:
    from apps.services.requestids import request_id_new

    request_id = request_id_new(service="svc-a", caller="token:abc")
    ref = request_id_parse(request_id)
    assert ref is not None and ref.service == "svc-a"
    assert ref.submitted_by("token:abc") and not ref.submitted_by("token:abd")
    assert len(request_id_new(service="s" * 63, caller=None)) <= 100
    # Another service's name, a changed character, or a foreign id: never submitted.
    body = request_id.rpartition(".")[2]
    assert request_id_parse(f"svc-b.{body}") is None
    flipped = body[:5] + ("A" if body[5] != "A" else "B") + body[6:]
    assert request_id_parse(f"svc-a.{flipped}") is None
    assert request_id_parse("0123456789abcdef0123456789abcdef") is None
    assert request_id_parse("svc-a." + "ü" * 36) is None
