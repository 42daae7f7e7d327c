"""The `hetzner` backend: each worker is a Hetzner Cloud server booted from cloud-init
(apps/provisioning/userdata.py), through the `hcloud` library.

Idempotence rests on the server's name, derived from the worker's name alone: before a
create the name is looked up, and a create that fails or times out (hcloud itself retries
timeouts and 502/504, so a retried POST may meet the server its first try made: 409
uniqueness_error) is followed by a lookup, never by a blind second create. So there is
one server per worker whatever the API does.

Requests are counted (a hook on hcloud's session sees every response, its own retries and
action polls included) against a budget per provisioner, which reconcile makes once per
pass (HCLOUD_REQUESTS_PER_PASS); past it a call raises BudgetExhausted and the pass
leaves the rest to the next one. A 429 is not retried: the RateLimit-Reset it carries
holds every call of this process until then (Hetzner allows 3,600 requests an hour).
"""

from __future__ import annotations

import builtins
import re
import threading
import time
from datetime import datetime
from typing import Any

import requests
from django.conf import settings
from hcloud import APIException, Client
from hcloud.firewalls import Firewall
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.networks import Network
from hcloud.placement_groups import PlacementGroup
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer, Server
from hcloud.ssh_keys import SSHKey

from apps.common.errors import DomainError
from apps.common.fleet import FleetChoice
from apps.provisioning.provisioners.base import LiveWorker, WorkerSpec
from apps.provisioning.provisioners.hetzner_machines import (
    GIB,
    MachineType,
    machine_of,
    machine_type_choose,
    machine_type_offered,
)
from apps.provisioning.userdata import worker_user_data

LABEL_PREFIX = "memrun-"
# What a server in these states still is: a machine that may run the worker.
_STOPPED_STATUSES = frozenset({"off", "stopping", "deleting"})
# Hetzner refuses more than this many servers in one spread placement group.
SPREAD_GROUP_MAX_SERVERS = 10


class HetznerError(Exception):
    """A Hetzner call failed in a way the next reconcile pass may not fix by itself."""


class BudgetExhausted(HetznerError):
    """This pass's request budget is spent; the next pass goes on."""


class RateLimited(HetznerError):
    """Hetzner answered 429; no request before the reset time it gave."""


class ActionFailed(HetznerError):
    """An action (a create, a delete) ended in error or outlasted its timeout."""


_rate_lock = threading.Lock()
_blocked_until = 0.0  # epoch seconds: the last 429's RateLimit-Reset, for the whole process


def server_name(worker_name: str) -> str:
    """The server's name for a worker: a valid hostname (RFC 1123 label), the same
    every time for the same worker."""
    name = re.sub(r"[^a-z0-9-]+", "-", worker_name.lower()).strip("-")
    return name[:63].rstrip("-") or "memrun-worker"


class HetznerProvisioner:
    def __init__(
        self,
        *,
        token: str,
        api_endpoint: str,
        location: str,
        image: str,
        ssh_keys: list[str],
        firewall: str,
        network: str,
        timeout_s: float,
        requests_per_pass: int,
        action_timeout_s: float,
    ) -> None:
        if not token:
            raise DomainError(
                "HCLOUD_TOKEN is not set: the appliance needs a Hetzner Cloud API token "
                "(read & write) to run provider=hetzner services",
                status=409,
                details={"setting": "HCLOUD_TOKEN"},
            )
        self.client = Client(token=token, api_endpoint=api_endpoint, timeout=timeout_s)
        self.location = location
        self.image = image
        self.ssh_keys = ssh_keys
        self.firewall = firewall
        self.network = network
        self.requests_per_pass = requests_per_pass
        self.action_timeout_s = action_timeout_s
        self.requests_made = 0
        # Listings that do not change within a pass, fetched once per provisioner.
        self._types: dict[str, list[MachineType]] = {}
        self._groups: dict[str, PlacementGroup | None] = {}
        self._attached: dict[str, Any] = {}
        # Every response, hcloud's own retries and polls too, is counted and checked for
        # a 429 here: hcloud offers no other place that sees response headers.
        self.client._client._session.hooks["response"].append(self._observe)

    # -- the Provisioner contract ------------------------------------------------------

    def create(self, spec: WorkerSpec) -> str:
        name = server_name(spec.name)
        existing = self._server_by_name(name)
        if existing is not None:
            return self._ours(existing, spec.name)
        location = spec.location or self.location
        machine = self.machine_type(
            server_type=spec.server_type,
            location=location,
            memory_bytes=spec.memory_bytes,
            disk_bytes=spec.disk_bytes,
        )
        group = self._placement_group(spec.service)
        labels = {LABEL_PREFIX + key: _label_value(value) for key, value in spec.labels.items()}
        self._spend()
        try:
            made = self.client.servers.create(
                name=name,
                server_type=ServerType(name=machine.name),
                image=Image(name=self.image),
                location=Location(name=location),
                labels=labels,
                user_data=worker_user_data(spec=spec, server_name=name),
                placement_group=group,
                firewalls=self._firewalls(),
                networks=self._networks(),
                ssh_keys=[SSHKey(name=key) for key in self.ssh_keys] or None,
            )
        except (APIException, requests.Timeout, requests.ConnectionError) as error:
            if isinstance(error, APIException) and error.code in ("invalid_input", "not_found"):
                raise HetznerError(f"Hetzner refused server {name}: {error.message}") from error
            # The request may have made the server before it failed: look, never retry.
            found = self._server_by_name(name)
            if found is None:
                raise HetznerError(f"creating server {name} failed: {error}") from error
            return self._ours(found, spec.name)
        server_id = int(made.server.id or 0)
        try:
            self._wait(made.action.id, made.action.status, made.action.error)
        except ActionFailed as error:
            # Cleanup past the budget: a broken server must not be found as this worker's.
            self._delete(server_id, budgeted=False)
            raise HetznerError(
                f"server {name} ({server_id}) failed to come up and was deleted; the next "
                f"pass makes it again: {error}"
            ) from error
        return str(server_id)

    def drain(self, ref: str) -> None:
        # A VM cannot be signalled from here; the worker's next heartbeat says "drain".
        return None

    def destroy(self, ref: str) -> None:
        if ref.isdigit():
            self._delete(int(ref))
            return
        found = self._server_by_name(server_name(ref))
        if found is not None and found.id is not None:
            self._delete(found.id)

    def list(self, labels: dict[str, str]) -> list[LiveWorker]:
        selector = ",".join(
            f"{LABEL_PREFIX}{key}={_label_value(value)}" for key, value in sorted(labels.items())
        )
        self._spend()
        servers = self.client.servers.get_all(label_selector=selector or f"{LABEL_PREFIX}worker")
        return [self._live(server) for server in servers]

    def server_verify(self, *, server_id: int, worker_name: str) -> bool:
        self._spend()
        try:
            server = self.client.servers.get_by_id(server_id)
        except APIException as error:
            if error.code == "not_found":
                return False
            raise
        return server.name == server_name(worker_name) and (server.labels or {}).get(
            f"{LABEL_PREFIX}worker"
        ) == _label_value(worker_name)

    # -- machine types -----------------------------------------------------------------

    def machine_types(self, *, location: str) -> builtins.list[MachineType]:
        """The server types offered in `location`, with its prices (one listing per
        provisioner); DomainError 422 for a location Hetzner does not list."""
        if location not in self._types:
            self._spend()
            known = {loc.name or "" for loc in self.client.locations.get_all()}
            if location not in known:
                raise DomainError(
                    f"unknown Hetzner location {location!r}; known: {', '.join(sorted(known))}",
                    status=422,
                    details={"fields": {"location": ["unknown location"]}},
                )
            self._spend()
            self._types[location] = [
                t
                for raw in self.client.server_types.get_all()
                if (t := machine_type_offered(raw.data_model, location)) is not None
            ]
        return self._types[location]

    def machine_type(
        self, *, server_type: str, location: str, memory_bytes: int, disk_bytes: int
    ) -> MachineType:
        """The named type (DomainError 422 when `location` does not offer it), else the
        cheapest that fits."""
        types = self.machine_types(location=location)
        if not server_type:
            return machine_type_choose(
                types=types, memory_bytes=memory_bytes, disk_bytes=disk_bytes, location=location
            )
        for machine in types:
            if machine.name == server_type:
                return machine
        raise DomainError(
            f"unknown server type {server_type!r} in {location}; offered: "
            f"{', '.join(t.name for t in types)}",
            status=422,
            details={"fields": {"server_type": ["unknown server type"]}},
        )

    # -- requests ----------------------------------------------------------------------

    def _observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        global _blocked_until
        self.requests_made += 1
        if response.status_code == 429:
            reset = response.headers.get("RateLimit-Reset", "")
            until = float(reset) if reset.isdigit() else time.time() + 60
            with _rate_lock:
                _blocked_until = max(_blocked_until, until)
            raise RateLimited(
                f"Hetzner's rate limit is reached (RateLimit-Limit "
                f"{response.headers.get('RateLimit-Limit', '?')}); no request before "
                f"{datetime.fromtimestamp(until).isoformat(timespec='seconds')}"
            )

    def _spend(self) -> None:
        """Refuse a call past this pass's budget or before the rate limit resets."""
        with _rate_lock:
            wait_s = _blocked_until - time.time()
        if wait_s > 0:
            raise RateLimited(f"Hetzner's rate limit resets in {wait_s:.0f} s")
        if self.requests_made >= self.requests_per_pass:
            raise BudgetExhausted(
                f"{self.requests_made} Hetzner requests this pass (HCLOUD_REQUESTS_PER_PASS="
                f"{self.requests_per_pass}); the next pass goes on"
            )

    def _wait(self, action_id: int, status: str | None, error: Any) -> None:
        """Poll an action until it finishes, backing off from 0.2 s to 5 s between polls;
        ActionFailed when it fails or outlasts HCLOUD_ACTION_TIMEOUT_S (a spent budget or
        a 429 while polling leaves the action running: the next pass finds its server)."""
        deadline = time.monotonic() + self.action_timeout_s
        delay_s = 0.2
        while status == "running":
            if time.monotonic() >= deadline:
                raise ActionFailed(
                    f"action {action_id} still running after {self.action_timeout_s:g} s"
                )
            time.sleep(min(delay_s, max(deadline - time.monotonic(), 0)))
            delay_s = min(delay_s * 2, 5.0)
            self._spend()
            action = self.client.actions.get_by_id(action_id)
            status, error = action.status, action.error
        if status == "error":
            message = error.get("message") if isinstance(error, dict) else error
            raise ActionFailed(f"action {action_id} failed: {message}")

    def _delete(self, server_id: int, *, budgeted: bool = True) -> None:
        if budgeted:
            self._spend()
        try:
            action = self.client.servers.delete(Server(id=server_id))
        except APIException as error:
            if error.code == "not_found":
                return
            raise
        self._wait(action.id, action.status, action.error)

    def _server_by_name(self, name: str) -> BoundServer | None:
        self._spend()
        return self.client.servers.get_by_name(name)

    def _ours(self, server: BoundServer, worker_name: str) -> str:
        if (server.labels or {}).get(f"{LABEL_PREFIX}worker") != _label_value(worker_name):
            raise HetznerError(
                f"a server named {server.name} ({server.id}) exists that memrun did not make "
                f"for worker {worker_name}; rename or delete it"
            )
        return str(server.id)

    def _placement_group(self, service: str) -> PlacementGroup | None:
        """The service's spread group, made once and found by its label after; None once
        it holds as many servers as Hetzner allows (the rest go unspread)."""
        if service not in self._groups:
            self._groups[service] = self._placement_group_find(service)
        return self._groups[service]

    def _placement_group_find(self, service: str) -> PlacementGroup | None:
        selector = f"{LABEL_PREFIX}service={_label_value(service)}"
        self._spend()
        found = self.client.placement_groups.get_all(label_selector=selector)
        if not found:
            self._spend()
            try:
                created = self.client.placement_groups.create(
                    name=server_name(f"memrun-{service}"),
                    type="spread",
                    labels={f"{LABEL_PREFIX}service": _label_value(service)},
                )
            except APIException as error:
                if error.code != "uniqueness_error":
                    raise
                self._spend()
                found = self.client.placement_groups.get_all(label_selector=selector)
            else:
                return created.placement_group
        group = found[0]
        if len(group.servers or []) >= SPREAD_GROUP_MAX_SERVERS:
            return None
        return group

    def _firewalls(self) -> builtins.list[Firewall] | None:
        if not self.firewall:
            return None
        if "firewall" in self._attached:
            return [self._attached["firewall"]]
        self._spend()
        found = self.client.firewalls.get_by_name(self.firewall)
        if found is None:
            raise HetznerError(f"HCLOUD_FIREWALL={self.firewall!r}: no such firewall")
        self._attached["firewall"] = found
        return [found]

    def _networks(self) -> builtins.list[Network] | None:
        if not self.network:
            return None
        if "network" in self._attached:
            return [self._attached["network"]]
        self._spend()
        found = self.client.networks.get_by_name(self.network)
        if found is None:
            raise HetznerError(f"HCLOUD_NETWORK={self.network!r}: no such network")
        self._attached["network"] = found
        return [found]

    def _live(self, server: BoundServer) -> LiveWorker:
        labels = {
            key[len(LABEL_PREFIX) :]: value
            for key, value in (server.labels or {}).items()
            if key.startswith(LABEL_PREFIX)
        }
        return LiveWorker(
            name=labels.get("worker", server.name or ""),
            ref=str(server.id),
            labels=labels,
            running=server.status not in _STOPPED_STATUSES,
            log_tail=f"server {server.id} is {server.status}"
            if server.status in _STOPPED_STATUSES
            else "",
            created_at=server.created,
            machine=machine_of(server),
        )


def _label_value(value: str) -> str:
    """A Hetzner label value: at most 63 of [a-zA-Z0-9._-], alphanumeric at both ends."""
    cleaned = re.sub(r"[^a-zA-Z0-9._-]+", "-", value)[:63]
    return cleaned.strip("._-")


def hetzner_fleet_check(choice: FleetChoice) -> None:
    """For provider=hetzner: DomainError unless the token is set, the location and the
    server type are ones the API lists, and the type (given, or the cheapest that fits)
    has the memory and disk the service asks for."""
    if choice.provider != "hetzner":
        return
    backend = hetzner_from_settings()
    machine = backend.machine_type(
        server_type=choice.server_type,
        location=choice.location or backend.location,
        memory_bytes=choice.memory_bytes,
        disk_bytes=choice.disk_bytes,
    )
    if machine.memory_bytes < choice.memory_bytes or machine.disk_bytes < choice.disk_bytes:
        raise DomainError(
            f"server type {machine.name} has {machine.memory_bytes / GIB:g} GiB of RAM and "
            f"{machine.disk_bytes / GIB:g} GiB of disk; the service asks for "
            f"{choice.memory_bytes / GIB:g} GiB and {choice.disk_bytes / GIB:g} GiB: pick a "
            "larger type, or none to have the cheapest that fits chosen",
            status=422,
            details={"fields": {"server_type": ["too small for the service"]}},
        )


def hetzner_from_settings() -> HetznerProvisioner:
    return HetznerProvisioner(
        token=settings.HCLOUD_TOKEN,
        api_endpoint=settings.HCLOUD_API_ENDPOINT,
        location=settings.HCLOUD_LOCATION,
        image=settings.HCLOUD_IMAGE,
        ssh_keys=list(settings.HCLOUD_SSH_KEYS),
        firewall=settings.HCLOUD_FIREWALL,
        network=settings.HCLOUD_NETWORK,
        timeout_s=settings.HCLOUD_TIMEOUT_S,
        requests_per_pass=settings.HCLOUD_REQUESTS_PER_PASS,
        action_timeout_s=settings.HCLOUD_ACTION_TIMEOUT_S,
    )
