"""The one HTTP client to the control plane (memrun.httpclient), against a local HTTP/1.1
server that answers what each test scripts: retries only where they are safe, the error
shape, the bearer token, pooled connections, streamed bodies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from memrun.errors import ApiError
from memrun.httpclient import NO_RETRY, HttpClient, Retry

FAST = Retry(attempts=3, backoff_min_s=0.01, backoff_max_s=0.02)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class Server:
    """Answers each request with the next scripted (status, body), then 200 {}; `hold`
    keeps a request waiting until released."""

    url: str = ""
    answers: list[tuple[int, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    state.hold.set()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so pooling can show

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            state.seen.append(
                Seen(self.command, self.path, dict(self.headers), body, self.client_address[1])
            )
            state.hold.wait(10)
            status, answer = state.answers.pop(0) if state.answers else (200, {})
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield state
    state.hold.set()
    httpd.shutdown()
    httpd.server_close()


def test_the_token_and_json_travel_and_connections_are_reused(server: Server) -> None:
    with HttpClient(server.url, token="mrk_secret") as http:
        server.answers = [(200, {"n": 1}), (200, {"n": 2})]
        assert http.call("POST", "/a?wait=1", json={"x": 1}) == {"n": 1}
        assert http.call("GET", "/b") == {"n": 2}
    first, second = server.seen
    assert first.headers["Authorization"] == "Bearer mrk_secret"
    assert first.headers["Content-Type"] == "application/json"
    assert json.loads(first.body) == {"x": 1} and first.path == "/a?wait=1"
    assert first.client_port == second.client_port  # one pooled connection


def test_an_error_answer_is_an_api_error_with_the_servers_message(server: Server) -> None:
    server.answers = [(422, {"message": "workers: too many", "details": {"max": 3}})]
    with HttpClient(server.url) as http, pytest.raises(ApiError) as refused:
        http.call("POST", "/scale", json={"workers": 9})
    assert (refused.value.status, refused.value.message) == (422, "workers: too many")
    assert refused.value.details == {"max": 3}
    assert "Authorization" not in server.seen[0].headers


def test_a_body_that_is_not_the_error_shape_still_names_the_status(server: Server) -> None:
    server.answers = [(404, b"<html>nope</html>")]
    with HttpClient(server.url) as http, pytest.raises(ApiError) as refused:
        http.call("GET", "/x")
    assert refused.value.status == 404 and refused.value.message == "HTTP 404 Not Found"


def test_an_idempotent_request_is_retried_through_a_gateway_error(server: Server) -> None:
    server.answers = [(503, {"message": "restarting"}), (502, {}), (200, {"ok": True})]
    with HttpClient(server.url, retry=FAST) as http:
        assert http.call("GET", "/status") == {"ok": True}
    assert [seen.method for seen in server.seen] == ["GET"] * 3


def test_retries_stop_after_the_policys_attempts(server: Server) -> None:
    server.answers = [(503, {"message": "down"})] * 3
    with HttpClient(server.url, retry=FAST) as http, pytest.raises(ApiError) as failed:
        http.call("GET", "/status")
    assert failed.value.status == 503 and len(server.seen) == 3


@pytest.mark.parametrize("retry", [FAST, NO_RETRY])
def test_a_post_is_never_sent_twice(server: Server, retry: Retry) -> None:
    server.answers = [(503, {"message": "busy"})]
    with HttpClient(server.url, retry=retry) as http, pytest.raises(ApiError) as failed:
        http.call("POST", "/invoke", json={})
    assert failed.value.status == 503 and len(server.seen) == 1


def test_a_read_timeout_is_not_retried(server: Server) -> None:
    server.hold.clear()
    with HttpClient(server.url, retry=FAST) as http, pytest.raises(ApiError) as late:
        http.call("GET", "/slow", timeout_s=0.3)
    assert late.value.status == 0 and "did not answer GET /slow in time" in late.value.message
    server.hold.set()
    assert len(server.seen) == 1


def test_an_unreachable_server_is_status_0_with_the_hint() -> None:
    http = HttpClient("http://127.0.0.1:1", retry=FAST, unreachable_hint="is it up?")
    with http, pytest.raises(ApiError) as unreachable:
        http.call("POST", "/x", json={})
    assert unreachable.value.status == 0
    assert unreachable.value.message.startswith("cannot reach memrun at http://127.0.0.1:1: ")
    assert unreachable.value.message.endswith("; is it up?")


def test_a_streamed_body_keeps_its_length_and_is_not_chunked(server: Server) -> None:
    chunks = [b"a" * 1000, b"b" * 24]
    with HttpClient(server.url) as http:
        http.call("POST", "/upload", content=iter(chunks), headers={"Content-Length": "1024"})
    (seen,) = server.seen
    assert seen.body == b"".join(chunks) and "Transfer-Encoding" not in seen.headers


def test_a_streamed_answer_is_read_in_chunks(server: Server) -> None:
    server.answers = [(200, b"x" * 100_000)]
    with HttpClient(server.url) as http, http.stream("GET", "/package") as response:
        assert sum(len(chunk) for chunk in response.iter_bytes(4096)) == 100_000


def test_the_workers_log_stream_gets_no_line_per_request(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from worker_daemon.logs import configure_stdlib_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_stdlib_logging(worker="w-1")
        with HttpClient(server.url) as http:
            http.call("GET", "/heartbeat")
        logging.getLogger("worker").info("a line a person reads")
    finally:
        root.handlers[:], root.level = saved
    out = capsys.readouterr().out
    assert "a line a person reads" in out and "HTTP Request" not in out
    assert len(server.seen) == 1
