"""A local stand-in of the Hetzner Cloud API (https://docs.hetzner.cloud), for tests.

A real threaded HTTP server on a free port that memrun reaches through the real `hcloud`
library (`HCLOUD_API_ENDPOINT`). It implements what memrun uses, with the documented
shapes: servers (create, get, list with `name`/`label_selector` and pagination meta,
delete), actions whose progress advances as they are polled and as time passes, server
types with per-location prices, images, locations, placement groups, firewalls, networks
and SSH keys; error bodies `{"error": {"code", "message", "details"}}`; the rate-limit
headers on every answer.

Faults on demand, through `StandIn.fault(...)` or `POST /_standin/faults`: 429 with
RateLimit-* headers, 502/504, a create that times out after making the server, an action
that fails; `StandIn.vanish(...)` deletes a server behind memrun's back. `calls` counts
requests per endpoint for API-call budgets; `on_server_created(server_id, name,
user_data)` is called for every server made (the bootstrap tests "boot" it from there).

Run alone: `python -m tests.hetzner.standin [--port N] [--token T]`.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_TOKEN = "standin-token"
RATE_LIMIT = 3600  # requests per hour per project, as Hetzner documents
MAX_PER_PAGE = 50
USER_DATA_MAX_BYTES = 32 * 1024

LOCATIONS = [
    {
        "id": 1,
        "name": "fsn1",
        "description": "Falkenstein DC Park 1",
        "country": "DE",
        "city": "Falkenstein",
        "latitude": 50.47612,
        "longitude": 12.370071,
        "network_zone": "eu-central",
    },
    {
        "id": 2,
        "name": "nbg1",
        "description": "Nuremberg DC Park 1",
        "country": "DE",
        "city": "Nuremberg",
        "latitude": 49.452102,
        "longitude": 11.076665,
        "network_zone": "eu-central",
    },
    {
        "id": 3,
        "name": "hel1",
        "description": "Helsinki DC Park 1",
        "country": "FI",
        "city": "Helsinki",
        "latitude": 60.169855,
        "longitude": 24.938379,
        "network_zone": "eu-central",
    },
]

# name: (cores, memory GB, disk GB, cpu_type, EUR/month net, EUR/hour net), Hetzner's
# published list (Germany/Finland, excl. VAT) for these types, the same in the three EU
# locations the stand-in serves.
SERVER_TYPES: dict[str, tuple[int, float, int, str, str, str]] = {
    "cx22": (2, 4, 40, "shared", "3.7900", "0.0060"),
    "cx32": (4, 8, 80, "shared", "6.8000", "0.0109"),
    "cx42": (8, 16, 160, "shared", "16.4000", "0.0263"),
    "cx52": (16, 32, 320, "shared", "32.4000", "0.0519"),
    "cpx11": (2, 2, 40, "shared", "4.3500", "0.0070"),
    "cpx21": (3, 4, 80, "shared", "7.5500", "0.0121"),
    "cpx31": (4, 8, 160, "shared", "13.6000", "0.0218"),
    "cpx41": (8, 16, 240, "shared", "25.2000", "0.0403"),
    "cpx51": (16, 32, 360, "shared", "54.9000", "0.0880"),
    "ccx13": (2, 8, 80, "dedicated", "12.4900", "0.0200"),
    "ccx23": (4, 16, 160, "dedicated", "24.4900", "0.0392"),
    "ccx33": (8, 32, 240, "dedicated", "48.4900", "0.0777"),
    "ccx43": (16, 64, 360, "dedicated", "96.4900", "0.1546"),
    "ccx53": (32, 128, 600, "dedicated", "192.4900", "0.3085"),
    "ccx63": (48, 192, 960, "dedicated", "288.4900", "0.4623"),
}

IMAGES = [
    {"id": 114690387, "name": "debian-12", "description": "Debian 12", "os_flavor": "debian"},
    {"id": 161547269, "name": "ubuntu-24.04", "description": "Ubuntu 24.04", "os_flavor": "ubuntu"},
]

FAULT_KINDS = ("rate_limit", "bad_gateway", "gateway_timeout", "create_timeout", "action_error")


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _gross(net: str) -> str:
    return f"{float(net) * 1.19:.4f}"


def server_type_json(type_id: int, name: str) -> dict[str, Any]:
    cores, memory, disk, cpu_type, monthly, hourly = SERVER_TYPES[name]
    return {
        "id": type_id,
        "name": name,
        "description": name.upper(),
        "category": "dedicated" if cpu_type == "dedicated" else "shared",
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "storage_type": "local",
        "cpu_type": cpu_type,
        "architecture": "x86",
        "deprecated": False,
        "deprecation": None,
        "included_traffic": 21990232555520,
        "prices": [
            {
                "location": loc["name"],
                "price_hourly": {"net": hourly, "gross": _gross(hourly)},
                "price_monthly": {"net": monthly, "gross": _gross(monthly)},
                "included_traffic": 21990232555520,
                "price_per_tb_traffic": {"net": "1.0000", "gross": "1.1900"},
            }
            for loc in LOCATIONS
        ],
        "locations": [
            {
                "id": loc["id"],
                "name": loc["name"],
                "deprecation": None,
                "available": True,
                "recommended": True,
            }
            for loc in LOCATIONS
        ],
    }


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


@dataclass
class Fault:
    """One injected fault: `kind` (FAULT_KINDS) on requests matching `method` and `path`
    (a regular expression on the path after /v1), `times` times."""

    kind: str
    method: str = "*"
    path: str = ".*"
    times: int = 1
    reset_s: int = 1

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and re.fullmatch(self.path, path) is not None


@dataclass
class Action:
    id: int
    command: str
    resources: list[dict[str, Any]]
    started: str
    started_at: float
    fail: bool = False
    polls: int = 0
    on_success: Callable[[], None] | None = None
    done: bool = False

    def json(self, *, duration_s: float) -> dict[str, Any]:
        # Progress advances with each poll and with time, whichever is further.
        by_polls = 50 * self.polls
        by_time = (
            100 if duration_s <= 0 else int(100 * (time.monotonic() - self.started_at) / duration_s)
        )
        progress = min(100, max(by_polls, by_time))
        status = "running"
        error = None
        finished = None
        if progress >= 100:
            status = "error" if self.fail else "success"
            finished = _now_iso()
            if self.fail:
                error = {"code": "action_failed", "message": f"{self.command} failed (injected)"}
            elif not self.done and self.on_success is not None:
                self.on_success()
            self.done = True
        return {
            "id": self.id,
            "command": self.command,
            "status": status,
            "progress": progress,
            "started": self.started,
            "finished": finished,
            "resources": self.resources,
            "error": error,
        }


@dataclass
class StandInState:
    token: str
    action_duration_s: float
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    servers: dict[int, dict[str, Any]] = field(default_factory=dict)
    user_data: dict[int, str] = field(default_factory=dict)
    actions: dict[int, Action] = field(default_factory=dict)
    placement_groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    firewalls: dict[int, dict[str, Any]] = field(default_factory=dict)
    networks: dict[int, dict[str, Any]] = field(default_factory=dict)
    ssh_keys: dict[int, dict[str, Any]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    requests_total: int = 0
    deleted: list[int] = field(default_factory=list)


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
        self._type_ids = {name: i + 1 for i, name in enumerate(SERVER_TYPES)}

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
            return self._server_make(
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
            return self._simple_create(kind, body)

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
                    status, body = self._route(method, path, query, payload, fault)
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

    # -- the API -----------------------------------------------------------------------

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: dict[str, Any],
        fault: Fault | None,
    ) -> tuple[int, dict[str, Any]]:
        segments = [s for s in path.split("/") if s]
        kind = segments[0] if segments else ""
        one = int(segments[1]) if len(segments) > 1 and segments[1].isdigit() else None
        if len(segments) > 1 and one is None:
            raise ApiError(404, "not_found", f"no such path {path}")
        if kind == "servers":
            if method == "POST" and one is None:
                return 201, self._server_create(body, fault)
            if method == "GET" and one is None:
                return 200, self._list("servers", list(self.state.servers.values()), query)
            server = self.state.servers.get(one) if one is not None else None
            if server is None:
                raise ApiError(404, "not_found", f"server with ID '{one}' not found")
            if method == "GET":
                return 200, {"server": server}
            if method == "DELETE":
                return 200, {"action": self._server_delete(server)}
        if kind == "actions" and method == "GET" and one is not None:
            action = self.state.actions.get(one)
            if action is None:
                raise ApiError(404, "not_found", f"action with ID '{one}' not found")
            action.polls += 1
            return 200, {"action": action.json(duration_s=self.state.action_duration_s)}
        if kind == "server_types" and method == "GET":
            types = [server_type_json(i, n) for n, i in self._type_ids.items()]
            if one is not None:
                found = [t for t in types if t["id"] == one]
                if not found:
                    raise ApiError(404, "not_found", f"server type with ID '{one}' not found")
                return 200, {"server_type": found[0]}
            return 200, self._list("server_types", types, query)
        if kind == "locations" and method == "GET":
            return 200, self._list("locations", LOCATIONS, query)
        if kind == "images" and method == "GET":
            return 200, self._list("images", IMAGES, query)
        if kind in ("placement_groups", "firewalls", "networks", "ssh_keys"):
            store = getattr(self.state, kind)
            if method == "GET" and one is None:
                return 200, self._list(kind, list(store.values()), query)
            if method == "POST" and one is None:
                singular = kind[:-1]
                return 201, {singular: self._simple_create(kind, body)}
            if method == "GET" and one in store:
                return 200, {kind[:-1]: store[one]}
            if method == "DELETE" and one in store:
                del store[one]
                return 204, {}
            raise ApiError(404, "not_found", f"{kind[:-1]} with ID '{one}' not found")
        raise ApiError(404, "not_found", f"no such endpoint {method} {path}")

    def _list(
        self, key: str, items: list[dict[str, Any]], query: dict[str, list[str]]
    ) -> dict[str, Any]:
        if "name" in query:
            items = [i for i in items if i.get("name") == query["name"][0]]
        if "label_selector" in query:
            selector = _label_selector(query["label_selector"][0])
            items = [i for i in items if selector(i.get("labels") or {})]
        if "type" in query:
            items = [i for i in items if i.get("type") == query["type"][0]]
        items = sorted(items, key=lambda i: i["id"])
        page = int(query.get("page", ["1"])[0])
        per_page = min(int(query.get("per_page", ["25"])[0]), MAX_PER_PAGE)
        if page < 1 or per_page < 1:
            raise ApiError(422, "invalid_input", "page and per_page must be positive")
        last = max(1, -(-len(items) // per_page))
        return {
            key: items[(page - 1) * per_page : page * per_page],
            "meta": {
                "pagination": {
                    "page": page,
                    "per_page": per_page,
                    "previous_page": page - 1 if page > 1 else None,
                    "next_page": page + 1 if page < last else None,
                    "last_page": last,
                    "total_entries": len(items),
                }
            },
        }

    def _simple_create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(
                422,
                "invalid_input",
                "invalid input in field 'name'",
                {"fields": [{"name": "name", "messages": ["is required"]}]},
            )
        store = getattr(self.state, kind)
        if any(i["name"] == name for i in store.values()):
            raise ApiError(
                409,
                "uniqueness_error",
                f"{kind[:-1]} name is already used",
                {"fields": [{"name": "name"}]},
            )
        item: dict[str, Any] = {
            "id": next(self.state.ids),
            "name": name,
            "labels": dict(body.get("labels") or {}),
            "created": _now_iso(),
        }
        if kind == "placement_groups":
            if body.get("type") != "spread":
                raise ApiError(
                    422, "invalid_input", "invalid input in field 'type': must be 'spread'"
                )
            item.update(type="spread", servers=[])
        elif kind == "firewalls":
            item.update(rules=body.get("rules") or [], applied_to=[])
        elif kind == "networks":
            item.update(
                ip_range=body.get("ip_range", "10.0.0.0/16"),
                subnets=[],
                routes=[],
                servers=[],
                protection={"delete": False},
            )
        elif kind == "ssh_keys":
            item.update(
                fingerprint=f"00:11:{item['id'] % 256:02x}", public_key=body.get("public_key", "")
            )
        store[item["id"]] = item
        return item

    def _action(
        self, command: str, resources: list[dict[str, Any]], *, fail: bool = False
    ) -> Action:
        action = Action(
            id=next(self.state.ids),
            command=command,
            resources=resources,
            started=_now_iso(),
            started_at=time.monotonic(),
            fail=fail,
        )
        self.state.actions[action.id] = action
        return action

    def _server_make(self, body: dict[str, Any]) -> dict[str, Any]:
        server_id = next(self.state.ids)
        type_name = body["server_type"]
        location = body.get("location") or "fsn1"
        server = {
            "id": server_id,
            "name": body["name"],
            "status": "initializing",
            "created": _now_iso(),
            "labels": dict(body.get("labels") or {}),
            "server_type": server_type_json(self._type_ids[type_name], type_name),
            "location": next(loc for loc in LOCATIONS if loc["name"] == location),
            "image": next(i for i in IMAGES if body.get("image") in (i["name"], i["id"])),
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "volumes": [],
            "primary_disk_size": SERVER_TYPES[type_name][2],
            "public_net": {
                "ipv4": {
                    "id": server_id + 1,
                    "ip": f"198.51.100.{server_id % 250 + 1}",
                    "blocked": False,
                    "dns_ptr": "",
                },
                "ipv6": {
                    "id": server_id + 2,
                    "ip": "2001:db8::/64",
                    "blocked": False,
                    "dns_ptr": [],
                },
                "floating_ips": [],
                "firewalls": [
                    {"id": f, "status": "applied"} for f in body.get("_firewall_ids", [])
                ],
            },
            "private_net": [
                {
                    "network": n,
                    "ip": f"10.0.0.{server_id % 250 + 2}",
                    "alias_ips": [],
                    "mac_address": "86:00:00:00:00:01",
                }
                for n in body.get("networks") or []
            ],
            "placement_group": None,
        }
        group_id = body.get("placement_group")
        if group_id is not None:
            group = self.state.placement_groups[group_id]
            group["servers"].append(server_id)
            server["placement_group"] = group
        self.state.servers[server_id] = server
        self.state.user_data[server_id] = body.get("user_data") or ""
        return server

    def _server_create(self, body: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not re.fullmatch(
            r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", name
        ):
            raise ApiError(
                422,
                "invalid_input",
                "invalid input in field 'name': must be a valid hostname",
                {"fields": [{"name": "name", "messages": ["invalid hostname"]}]},
            )
        if any(s["name"] == name for s in self.state.servers.values()):
            raise ApiError(
                409,
                "uniqueness_error",
                "server name is already used",
                {"fields": [{"name": "name"}]},
            )
        if body.get("server_type") not in SERVER_TYPES:
            raise ApiError(
                422, "invalid_input", f"server type {body.get('server_type')!r} not found"
            )
        if body.get("image") not in [i["name"] for i in IMAGES] + [i["id"] for i in IMAGES]:
            raise ApiError(422, "invalid_input", f"image {body.get('image')!r} not found")
        location = body.get("location", "fsn1")
        if location not in [loc["name"] for loc in LOCATIONS]:
            raise ApiError(422, "invalid_input", f"location {location!r} not found")
        user_data = body.get("user_data") or ""
        if len(user_data.encode()) > USER_DATA_MAX_BYTES:
            raise ApiError(
                422, "invalid_input", "invalid input in field 'user_data': longer than 32 KiB"
            )
        labels = body.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise ApiError(422, "invalid_input", "invalid input in field 'labels'")
        group = body.get("placement_group")
        if group is not None and group not in self.state.placement_groups:
            raise ApiError(404, "not_found", f"placement group with ID '{group}' not found")
        for network in body.get("networks") or []:
            if network not in self.state.networks:
                raise ApiError(404, "not_found", f"network with ID '{network}' not found")
        firewall_ids = [f["firewall"] for f in body.get("firewalls") or []]
        for firewall in firewall_ids:
            if firewall not in self.state.firewalls:
                raise ApiError(404, "not_found", f"firewall with ID '{firewall}' not found")
        for key in body.get("ssh_keys") or []:
            if not any(key in (k["id"], k["name"]) for k in self.state.ssh_keys.values()):
                raise ApiError(404, "not_found", f"SSH key {key!r} not found")
        server = self._server_make({**body, "location": location, "_firewall_ids": firewall_ids})
        action = self._action(
            "create_server",
            [{"id": server["id"], "type": "server"}],
            fail=fault is not None and fault.kind == "action_error",
        )

        def running() -> None:
            if server["id"] in self.state.servers:
                server["status"] = "running"

        action.on_success = running
        return {
            "server": server,
            "action": action.json(duration_s=self.state.action_duration_s),
            "next_actions": [],
            "root_password": None,
            "_created": (server["id"], name, user_data),
        }

    def _server_delete(self, server: dict[str, Any]) -> dict[str, Any]:
        del self.state.servers[server["id"]]
        self.state.deleted.append(server["id"])
        for group in self.state.placement_groups.values():
            if server["id"] in group["servers"]:
                group["servers"].remove(server["id"])
        action = self._action("delete_server", [{"id": server["id"], "type": "server"}])
        return action.json(duration_s=self.state.action_duration_s)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout fault, a closed pool connection) is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _endpoint_name(path: str) -> str:
    """/servers/17/actions -> /servers/{id}/actions: the key `calls` counts by."""
    return re.sub(r"/\d+", "/{id}", path)


def _label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """Hetzner's label selector: comma-separated `k=v`, `k!=v`, `k`, `!k`."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            key, value = term.split("!=", 1)
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = term.split("=", 1)
            key = key.rstrip("=")
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda labels, k=term[1:]: k not in labels)
        else:
            tests.append(lambda labels, k=term: k in labels)
    return lambda labels: all(t(labels) for t in tests)


@contextmanager
def standin_running(**kwargs: Any) -> Iterator[StandIn]:
    """A serving stand-in for the duration of the block."""
    standin = StandIn(**kwargs).serve()
    try:
        yield standin
    finally:
        standin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a local stand-in of the Hetzner Cloud API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    args = parser.parse_args()
    standin = StandIn(token=args.token).serve(args.host, args.port)
    print(f"Hetzner stand-in at {standin.url} (token {args.token})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        standin.close()


if __name__ == "__main__":
    main()
