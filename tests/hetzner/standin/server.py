"""The Hetzner stand-in's HTTP side: a real threaded HTTP server that checks the token,
counts calls per endpoint, sends the rate-limit headers, injects faults, and hands each
API call to its cloud (tests/hetzner/standin/cloud.py)."""

from __future__ import annotations

import collections
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.hetzner.standin.catalog import DEFAULT_TOKEN, FAULT_KINDS, RATE_LIMIT
from tests.hetzner.standin.cloud import ApiError, Cloud, Fault, StandInState


class StandIn:
    """The stand-in's state and its Python handle. Start with `serve()` (or the
    `hetzner_standin` fixture); `url` is what HCLOUD_API_ENDPOINT takes."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        action_duration_s: float = 0.5,
        on_server_created: Callable[[int, str, str], None] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.state = StandInState(token=token, action_duration_s=action_duration_s)
        self.on_server_created = on_server_created
        self.create_timeout_s = 3.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.cloud = Cloud(self.state)

    # -- the Python handle -------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not serving"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def fault(
        self,
        kind: str,
        *,
        method: str = "*",
        path: str = ".*",
        times: int = 1,
        reset_s: int = 1,
    ) -> None:
        """Inject `kind` into the next `times` requests that match."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        with self.lock:
            self.state.faults.append(Fault(kind, method, path, times, reset_s))

    def vanish(self, server_id: int) -> None:
        """The server disappears as if deleted outside memrun."""
        with self.lock:
            self.state.servers.pop(server_id, None)

    def add_server(self, *, name: str, labels: dict[str, str], server_type: str = "cpx11") -> int:
        """A server made outside memrun (an orphan, for tests)."""
        with self.lock:
            return self.cloud.server_make(
                {"name": name, "labels": labels, "server_type": server_type, "image": "debian-12"}
            )["id"]

    def servers(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(s) for s in self.state.servers.values()]

    def user_data(self, server_id: int) -> str:
        with self.lock:
            return self.state.user_data[server_id]

    @property
    def calls(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.state.calls)

    def calls_reset(self) -> None:
        with self.lock:
            self.state.calls.clear()

    @property
    def placement_groups(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(g) for g in self.state.placement_groups.values()]

    def resource_add(self, kind: str, **body: Any) -> dict[str, Any]:
        """Create a firewall, network or ssh_key as an operator would beforehand."""
        with self.lock:
            return self.cloud.simple_create(kind, body)

    # -- serving -----------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> StandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

            def do_PUT(self) -> None:
                standin._handle(self, "PUT")

            def do_DELETE(self) -> None:
                standin._handle(self, "DELETE")

        self._server = _QuietServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hetzner-standin", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- HTTP --------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(request.path)
        path = parts.path
        query = {k: v for k, v in parse_qs(parts.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        status, body, headers = 200, {}, {}
        delay_s = 0.0
        try:
            if path.startswith("/_standin/"):
                status, body = self._control(method, path, raw)
            else:
                if not path.startswith("/v1/"):
                    raise ApiError(404, "not_found", f"no such path {path}")
                path = path[3:]
                endpoint = f"{method} {_endpoint_name(path)}"
                with self.lock:
                    self.state.calls[endpoint] += 1
                    self.state.requests_total += 1
                    headers = self._rate_headers()
                    fault = self._fault_take(method, path)
                if request.headers.get("Authorization") != f"Bearer {self.state.token}":
                    raise ApiError(401, "unauthorized", "unable to authenticate")
                if fault is not None and fault.kind == "rate_limit":
                    headers["RateLimit-Remaining"] = "0"
                    headers["RateLimit-Reset"] = str(int(time.time()) + fault.reset_s)
                    raise ApiError(
                        429, "rate_limit_exceeded", "limit of 3600 requests per hour reached"
                    )
                if fault is not None and fault.kind in ("bad_gateway", "gateway_timeout"):
                    status = 502 if fault.kind == "bad_gateway" else 504
                    self._send_raw(
                        request, status, b"<html>gateway error</html>", headers, "text/html"
                    )
                    return
                payload: Any = json.loads(raw) if raw else {}
                if raw and not isinstance(payload, dict):
                    raise ApiError(400, "json_error", "the body must be a JSON object")
                with self.lock:
                    status, body = self.cloud.route(method, path, query, payload, fault)
                if fault is not None and fault.kind == "create_timeout":
                    delay_s = self.create_timeout_s
        except ApiError as error:
            status = error.status
            body = {
                "error": {"code": error.code, "message": error.message, "details": error.details}
            }
        except (ValueError, KeyError, TypeError) as error:
            status = 400
            body = {"error": {"code": "invalid_input", "message": str(error), "details": None}}
        if delay_s:
            # The server exists; the answer comes after the client gave up waiting.
            time.sleep(delay_s)
        created = body.pop("_created", None) if isinstance(body, dict) else None
        with suppress(OSError):  # the client gave up (a create_timeout fault)
            self._send_raw(request, status, json.dumps(body).encode(), headers, "application/json")
        if created is not None and self.on_server_created is not None:
            self.on_server_created(*created)

    def _send_raw(
        self,
        request: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str],
        content_type: str,
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)

    def _rate_headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(RATE_LIMIT),
            "RateLimit-Remaining": str(max(0, RATE_LIMIT - self.state.requests_total)),
            "RateLimit-Reset": str(int(time.time()) + 3600),
        }

    def _fault_take(self, method: str, path: str) -> Fault | None:
        for fault in self.state.faults:
            if fault.matches(method, path):
                fault.times -= 1
                if fault.times <= 0:
                    self.state.faults.remove(fault)
                return fault
        return None

    def _control(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        body = json.loads(raw) if raw else {}
        if method == "POST" and path == "/_standin/faults":
            self.fault(**body)
            return 201, {}
        if method == "POST" and path == "/_standin/vanish":
            self.vanish(int(body["server_id"]))
            return 200, {}
        if method == "GET" and path == "/_standin/calls":
            return 200, {"calls": dict(self.calls)}
        raise ApiError(404, "not_found", f"no control endpoint {method} {path}")


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout fault, a closed pool connection) is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _endpoint_name(path: str) -> str:
    """/servers/17/actions -> /servers/{id}/actions: the key `calls` counts by."""
    return re.sub(r"/\d+", "/{id}", path)


@contextmanager
def standin_running(**kwargs: Any) -> Iterator[StandIn]:
    """A serving stand-in for the duration of the block."""
    standin = StandIn(**kwargs).serve()
    try:
        yield standin
    finally:
        standin.close()
