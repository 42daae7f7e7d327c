"""The `hetzner` provisioner through the real hcloud library against the stand-in: one
server per worker under every injected fault, the documented create (labels, spread
group, firewall, network, SSH keys, user-data), machine types from memory and disk, and
the join exchange's check."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from apps.common.errors import DomainError
from apps.provisioning.provisioners import WorkerSpec, provisioner_for
from apps.provisioning.provisioners.hetzner import (
    BudgetExhausted,
    HetznerError,
    HetznerProvisioner,
    RateLimited,
    server_name,
)
from apps.provisioning.provisioners.hetzner_machines import MachineType, machine_type_choose
from apps.provisioning.provisioners.local import LocalProvisioner
from tests.hetzner.standin import StandIn

GIB = 2**30


def spec(name: str = "svc-v1-abc123", *, service: str = "svc", **fields: object) -> WorkerSpec:
    return WorkerSpec(
        name=name,
        service=service,
        deployment_id=7,
        env={"MEMRUN_WORKER_TOKEN": "mrw_secret"},
        labels={"service": service, "worker": name, "deployment": "7"},
        memory_bytes=int(fields.pop("memory_bytes", 4 * GIB)),  # type: ignore[call-overload]
        disk_bytes=int(fields.pop("disk_bytes", 50 * GIB)),  # type: ignore[call-overload]
        **fields,  # type: ignore[arg-type]
    )


def hetzner() -> HetznerProvisioner:
    backend = provisioner_for("hetzner")
    assert isinstance(backend, HetznerProvisioner)
    return backend


def until(make: Callable[[], str], *, deadline_s: float = 30) -> str:
    """Call `make` as later reconcile passes would, until it returns (a pass that hits a
    fault raises; the next one goes on)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return make()
        except HetznerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_create_makes_one_server_as_documented(hetzner_standin: StandIn) -> None:
    backend = hetzner()
    ref = backend.create(spec())
    [server] = hetzner_standin.servers()
    assert ref == str(server["id"]) and server["name"] == "svc-v1-abc123"
    assert server["labels"] == {
        "memrun-service": "svc",
        "memrun-worker": "svc-v1-abc123",
        "memrun-deployment": "7",
    }
    # The cheapest type with 4 GiB RAM and 50 GiB disk (cx22 has 40 GB), in the default
    # location.
    assert server["server_type"]["name"] == "cx32" and server["location"]["name"] == "fsn1"
    [group] = hetzner_standin.placement_groups
    assert group["type"] == "spread" and group["labels"] == {"memrun-service": "svc"}
    assert server["placement_group"]["id"] == group["id"]
    assert [f["status"] for f in server["public_net"]["firewalls"]] == ["applied"]
    assert len(server["private_net"]) == 1
    user_data = hetzner_standin.user_data(server["id"])
    assert user_data.startswith("#cloud-config") and "mrw_secret" not in user_data
    assert server["status"] == "running"  # create waited on its action

    # Idempotent: the same worker again finds its server; a second worker joins the group.
    assert backend.create(spec()) == ref
    hetzner().create(spec("svc-v1-def456"))
    assert len(hetzner_standin.servers()) == 2 and len(hetzner_standin.placement_groups) == 1


@pytest.mark.parametrize(
    ("kind", "method", "path"),
    [
        ("bad_gateway", "POST", "/servers"),
        ("gateway_timeout", "POST", "/servers"),
        ("create_timeout", "POST", "/servers"),
        ("rate_limit", "POST", "/servers"),
        ("action_error", "POST", "/servers"),
        ("bad_gateway", "GET", "/servers"),
        ("rate_limit", "GET", "/actions/\\d+"),
    ],
)
def test_one_server_per_worker_under_each_fault(
    hetzner_standin: StandIn, kind: str, method: str, path: str
) -> None:
    hetzner_standin.fault(kind, method=method, path=path, reset_s=1)
    refs = {until(lambda: hetzner().create(spec())) for _ in range(2)}
    servers = hetzner_standin.servers()
    assert [s["name"] for s in servers] == ["svc-v1-abc123"]
    assert refs == {str(servers[0]["id"])}
    if kind == "create_timeout":
        # The first POST made the server; hcloud's retry met it (409), memrun looked it up.
        assert hetzner_standin.calls["POST /servers"] == 2
    if kind == "action_error":
        assert len(hetzner_standin.state.deleted) == 1  # the broken one was deleted


def test_a_429_holds_every_call_until_its_reset(hetzner_standin: StandIn) -> None:
    hetzner_standin.fault("rate_limit", path="/servers", reset_s=30)
    with pytest.raises(RateLimited):
        hetzner().list({"service": "svc"})
    before = sum(hetzner_standin.calls.values())
    with pytest.raises(RateLimited, match="resets in"):
        hetzner().create(spec())
    assert sum(hetzner_standin.calls.values()) == before  # nothing was sent


def test_the_request_budget_stops_a_pass(hetzner_standin: StandIn, settings) -> None:
    settings.HCLOUD_REQUESTS_PER_PASS = 3
    backend = hetzner()
    with pytest.raises(BudgetExhausted, match="HCLOUD_REQUESTS_PER_PASS=3"):
        backend.create(spec())
    assert backend.requests_made == 3 and hetzner_standin.servers() == []


def test_list_destroy_and_verify(hetzner_standin: StandIn, tmp_path: Path) -> None:
    backend = hetzner()
    ref = backend.create(spec(server_type="cpx41", location="nbg1"))
    hetzner().create(spec("other-v1-000000", service="other"))
    [live] = backend.list({"service": "svc"})
    assert live.name == "svc-v1-abc123" and live.ref == ref and live.running
    assert live.labels["deployment"] == "7" and live.created_at is not None
    assert live.machine["server_type"] == "cpx41" and live.machine["location"] == "nbg1"
    assert live.machine["price_monthly_eur"] == "25.2000"
    assert live.machine["ipv4"] and live.machine["private_ips"]

    assert backend.server_verify(server_id=int(ref), worker_name="svc-v1-abc123")
    assert not backend.server_verify(server_id=int(ref), worker_name="svc-v1-zzzzzz")
    assert not backend.server_verify(server_id=999999, worker_name="svc-v1-abc123")
    assert not LocalProvisioner(
        hetzner_standin and __import__("pathlib").Path("/tmp")
    ).server_verify(server_id=int(ref), worker_name="svc-v1-abc123")

    backend.destroy(ref)
    backend.destroy(ref)  # gone already: not an error
    assert backend.list({"service": "svc"}) == []
    assert [s["name"] for s in hetzner_standin.servers()] == ["other-v1-000000"]


def test_unknown_type_or_location_is_a_clear_422(hetzner_standin: StandIn) -> None:
    with pytest.raises(DomainError, match="unknown server type 'cpx99' in fsn1") as error:
        hetzner().create(spec(server_type="cpx99"))
    assert error.value.status == 422
    with pytest.raises(DomainError, match="unknown Hetzner location 'mars1'"):
        hetzner().create(spec(location="mars1"))
    with pytest.raises(DomainError, match="the largest is ccx63"):
        hetzner().create(spec(memory_bytes=512 * GIB))
    assert hetzner_standin.servers() == []


def test_a_name_taken_by_a_foreign_server_is_refused(hetzner_standin: StandIn) -> None:
    hetzner_standin.add_server(name="svc-v1-abc123", labels={})
    with pytest.raises(HetznerError, match="memrun did not make"):
        hetzner().create(spec())


def test_machine_type_choice() -> None:
    def t(name: str, memory: int, disk: int, monthly: str) -> MachineType:
        return MachineType(name, 2, memory * GIB, disk * GIB, Decimal("0.01"), Decimal(monthly))

    types = [t("big", 32, 360, "54.90"), t("small", 4, 80, "7.55"), t("mid", 16, 240, "25.20")]
    choose = machine_type_choose
    assert (
        choose(types=types, memory_bytes=4 * GIB, disk_bytes=50 * GIB, location="x").name == "small"
    )
    assert choose(types=types, memory_bytes=5 * GIB, disk_bytes=0, location="x").name == "mid"
    assert choose(types=types, memory_bytes=0, disk_bytes=300 * GIB, location="x").name == "big"
    with pytest.raises(DomainError, match="largest is big") as error:
        choose(types=types, memory_bytes=64 * GIB, disk_bytes=0, location="x")
    assert error.value.status == 422


def test_server_names_are_hostnames() -> None:
    assert server_name("svc-v1-abc123") == "svc-v1-abc123"
    assert server_name("My_Svc.v2-ab") == "my-svc-v2-ab"
    assert len(server_name("x" * 100)) == 63


def test_no_token_is_a_clear_409(settings) -> None:
    settings.HCLOUD_TOKEN = ""
    with pytest.raises(DomainError, match="HCLOUD_TOKEN is not set") as error:
        provisioner_for("hetzner")
    assert error.value.status == 409
