"""The Hetzner stand-in's cloud: its resources and their rules (servers, actions,
placement groups, firewalls, networks, SSH keys), answering API calls already parsed.
The HTTP side (auth, faults, rate-limit headers) is tests/hetzner/standin/server.py."""

from __future__ import annotations

import collections
import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.hetzner.standin.catalog import (
    IMAGES,
    LOCATIONS,
    MAX_PER_PAGE,
    SERVER_TYPES,
    USER_DATA_MAX_BYTES,
    server_type_json,
)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


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


class Cloud:
    """The resources of one stand-in, kept in `state`; every method runs under the
    stand-in's lock."""

    def __init__(self, state: StandInState) -> None:
        self.state = state
        self._type_ids = {name: i + 1 for i, name in enumerate(SERVER_TYPES)}

    def route(
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
                return 201, {singular: self.simple_create(kind, body)}
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

    def simple_create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
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

    def server_make(self, body: dict[str, Any]) -> dict[str, Any]:
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
        server = self.server_make({**body, "location": location, "_firewall_ids": firewall_ids})
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
