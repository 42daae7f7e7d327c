"""Scoped tokens: an invoke-only token for service A walks every route of the API, the
fast lane and the web pages and may only invoke A and poll its own requests; the role
matrix of read / deploy / admin on one service and on all; a token never holds more
than its user; revocation and grant changes reach the cached look-ups in time."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.common.errors import DomainError
from apps.common.permissions import Grant, Role
from apps.services.models import ApiToken, ApiTokenGrant, Deployment, Service, UserGrant
from apps.services.tokens import apitoken_create, usergrant_add, usergrant_delete
from apps.web import urls as web_urls
from memrun_site.api import api
from tests.api.test_fastlane import call as fast
from tests.fixtures.services import wait_for_topic_leaders

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"
# Routes that take only a worker's own credential (mrw_...): a user token is never a
# caller there, so it gets 401 like no credential at all.
WORKER_ONLY = {
    ("POST", "/api/v1/workers/{name}/heartbeat"),
    ("GET", "/api/v1/workers/{name}/handoff"),
    ("POST", "/api/v1/workers/{name}/logs"),
}
# Open to anyone, as tests/api/test_auth.py lists them: the health check, and a remote
# worker's first boot (the open-source wheel; the join, whose token is its credential).
PUBLIC = {
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/bootstrap/wheel"),
    ("POST", "/api/v1/workers/join"),
}


@dataclass
class World:
    a: str
    b: str
    admin: Client
    admin_secret: str
    invoker: Client
    invoker_secret: str
    foreign_request: str  # submitted to A by the admin token
    deployment_id: int  # one of A's


def post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, json.dumps(body), content_type=JSON)


@pytest.fixture
def world(
    user: User,
    api_client: Client,
    api_token: tuple[ApiToken, str],
    service_factory: Callable[..., Service],
    deploy_settings: Callable[..., Deployment],
    kafka_admin: Any,
) -> World:
    """Services A and B (A deployed, no worker: invokes queue), the staff user's token,
    and an invoke-only token of the same staff user for A."""
    a, b = service_factory(), service_factory()
    # A topic just made has no partition leaders for a moment; a produce then waits.
    wait_for_topic_leaders(kafka_admin, a.request_topic, a.partitions)
    deployment = deploy_settings(a, status="active")
    _token, secret = apitoken_create(user=user, name="app", grants=[Grant(a.name, Role.INVOKE)])
    queued = post(api_client, f"/api/v1/services/{a.name}/invoke?wait=0&queue=true", {"x": 1})
    assert queued.status_code == 202, queued.content
    return World(
        a=a.name,
        b=b.name,
        admin=api_client,
        admin_secret=api_token[1],
        invoker=Client(headers={"Authorization": f"Bearer {secret}"}),
        invoker_secret=secret,
        foreign_request=queued.json()["request_id"],
        deployment_id=deployment.pk,
    )


def operations() -> list[tuple[str, str]]:
    schema = api.get_openapi_schema(path_prefix="/api/v1/")
    return sorted(
        (method.upper(), path) for path, methods in schema["paths"].items() for method in methods
    )


def fill(path: str, world: World, service: str) -> str:
    values = {
        "name": service,
        "request_id": world.foreign_request,
        "deployment_id": str(world.deployment_id),
        "version": "1",
        "dead_letter_id": "0-0",
        "token_id": "1",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "1"), path)


def snapshot() -> tuple[Any, ...]:
    """What a refused call must not change."""
    return (
        list(Service.objects.values_list("name", "desired_workers").order_by("name")),
        list(Deployment.objects.values_list("pk", "status").order_by("pk")),
        list(ApiToken.objects.values_list("pk", "revoked_at").order_by("pk")),
        ApiTokenGrant.objects.count(),
        UserGrant.objects.count(),
    )


def test_an_invoke_only_token_may_invoke_its_service_and_poll_its_requests_only(
    world: World,
) -> None:
    before = snapshot()
    allowed: set[tuple[str, str]] = set()
    for method, path in operations():
        if (method, path) in PUBLIC:
            continue
        for service in (world.a, world.b):
            url = fill(path, world, service)
            if method == "POST" and path.endswith(("/invoke", "/invoke-batch")):
                url += "?queue=true&wait=0"
            body = "[{}]" if path.endswith("/invoke-batch") else "{}"
            response = world.invoker.generic(method, url, data=body, content_type=JSON)
            if (method, path) in WORKER_ONLY:
                assert response.status_code == 401, (method, url)
                continue
            if response.status_code not in (403, 404):
                allowed.add((method, path, service == world.a))  # type: ignore[arg-type]
                continue
            if response.status_code == 403:
                assert (
                    "needs the" in response.json()["message"]
                    or "may not see" in (response.json()["message"])
                ), (method, url, response.content)
    assert allowed == {
        ("POST", "/api/v1/services/{name}/invoke", True),
        ("POST", "/api/v1/services/{name}/invoke-batch", True),
    }
    # Its refusals changed nothing (its own invokes only queued requests).
    assert snapshot() == before
    # It polls what it submitted, and not what another caller submitted.
    mine = post(world.invoker, f"/api/v1/services/{world.a}/invoke?wait=0&queue=true", {"y": 2})
    assert mine.status_code == 202
    request_id = mine.json()["request_id"]
    assert world.invoker.get(f"/api/v1/requests/{request_id}").json()["status"] == "queued"
    refused = world.invoker.get(f"/api/v1/requests/{world.foreign_request}")
    assert refused.status_code == 403
    assert "needs the read role" in refused.json()["message"]
    # The admin reads both.
    for rid in (request_id, world.foreign_request):
        assert world.admin.get(f"/api/v1/requests/{rid}").status_code == 200


def test_the_fast_lane_checks_the_same_roles(world: World) -> None:
    # Known to this process (cached) after one call through Django.
    assert world.invoker.get(f"/api/v1/requests/{world.foreign_request}").status_code == 403
    status, _, body = fast(
        "POST",
        f"/api/v1/services/{world.a}/invoke",
        "wait=0&queue=true",
        world.invoker_secret,
        {"z": 3},
    )
    assert status == 202, body
    own = body["request_id"]
    status, _, body = fast(
        "POST",
        f"/api/v1/services/{world.b}/invoke",
        "wait=0&queue=true",
        world.invoker_secret,
        {"z": 3},
    )
    assert status == 403 and body["details"]["role"] == "invoke", body
    status, _, body = fast(
        "POST",
        f"/api/v1/services/{world.b}/invoke-batch",
        "queue=true",
        world.invoker_secret,
        [{"z": 3}],
    )
    assert status == 403, body
    assert fast("GET", f"/api/v1/requests/{own}", "", world.invoker_secret)[0] == 200
    assert (
        fast("GET", f"/api/v1/requests/{world.foreign_request}", "", world.invoker_secret)[0] == 403
    )
    assert fast("GET", "/api/v1/requests/nope", "", world.invoker_secret)[0] == 404


def test_the_web_pages_show_a_user_only_its_services(
    world: World, deploy_settings: Callable[..., Deployment]
) -> None:
    """A user without staff status holding invoke on A sees no service in lists, and
    each service page is a 403, whatever the service."""
    carol = User.objects.create_user(username="carol")
    usergrant_add(user=carol, role="invoke", service=Service.objects.get(name=world.a))
    client = Client()
    client.force_login(carol)
    before = snapshot()
    dashboard = client.get("/dashboard/")
    assert dashboard.status_code == 200
    assert world.a not in dashboard.content.decode() and world.b not in dashboard.content.decode()
    assert world.a not in client.get("/dashboard/live/").content.decode()
    for service in (world.a, world.b):
        for url, method in [
            (f"/services/{service}/", "get"),
            (f"/services/{service}/diff/?a=1&b=1", "get"),
            (f"/services/{service}/logs/", "get"),
            (f"/services/{service}/dead-letters/", "get"),
            (f"/services/{service}/dead-letters/0-0/", "get"),
            (f"/services/{service}/rollback/", "post"),
            (f"/services/{service}/scale/", "post"),
            (f"/services/{service}/dead-letters/replay/", "post"),
        ]:
            response = getattr(client, method)(url, {"version": 1, "workers": 2, "ids": ["0-0"]})
            assert response.status_code == 403, (url, response.status_code)
    assert client.get(f"/deployments/{world.deployment_id}/").status_code == 403
    assert client.get(f"/deployments/{world.deployment_id}/live/").status_code == 403
    assert "holds the deploy role on no service" in client.get("/deploy/").content.decode()
    lookup = client.get(f"/requests/?id={world.foreign_request}")
    assert lookup.status_code == 403
    assert snapshot() == before
    # A grant of read on A opens A's pages, and only A's.
    usergrant_add(user=carol, role="read", service=Service.objects.get(name=world.a))
    assert client.get(f"/services/{world.a}/").status_code == 200
    assert client.get(f"/services/{world.b}/").status_code == 403
    assert world.a in client.get("/dashboard/").content.decode()
    assert world.b not in client.get("/dashboard/").content.decode()


ROLE_CASES = [
    # (grant service: "A" / None, role) -> set of checks that must pass
    ("A", Role.READ, {"get_a", "list_a"}),
    ("A", Role.DEPLOY, {"get_a", "list_a", "patch_a", "scale_a", "invoke_a"}),
    ("A", Role.ADMIN, {"get_a", "list_a", "patch_a", "scale_a", "invoke_a", "delete_a"}),
    (None, Role.READ, {"get_a", "get_b", "list_a", "list_b", "metrics"}),
    (
        None,
        Role.DEPLOY,
        {"get_a", "get_b", "list_a", "list_b", "metrics", "patch_a", "scale_a", "invoke_a"},
    ),
    (
        None,
        Role.ADMIN,
        {
            *("get_a", "get_b", "list_a", "list_b", "metrics", "patch_a", "scale_a"),
            *("invoke_a", "delete_a", "create", "gc", "tokens"),
        },
    ),
]


@pytest.mark.parametrize(
    ("scope", "role", "expected"), ROLE_CASES, ids=[f"{r}-{s or 'all'}" for s, r, _ in ROLE_CASES]
)
def test_role_matrix(
    world: World, user: User, scope: str | None, role: Role, expected: set[str]
) -> None:
    """Each role, on A or on all, passes exactly the checks it should (403 otherwise)."""
    grant = Grant(world.a if scope else None, role)
    _token, secret = apitoken_create(user=user, name=f"m-{role}", grants=[grant])
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    a, b = world.a, world.b

    def allowed(response: Any) -> bool:
        assert response.status_code != 401, response.content
        return response.status_code != 403

    listing = client.get("/api/v1/services")
    listed = {s["name"] for s in listing.json()} if listing.status_code == 200 else set()
    results = {
        "get_a": allowed(client.get(f"/api/v1/services/{a}")),
        "get_b": allowed(client.get(f"/api/v1/services/{b}")),
        "list_a": a in listed,
        "list_b": b in listed,
        "metrics": allowed(client.get("/metrics")),
        "patch_a": allowed(client.patch(f"/api/v1/services/{a}", "{}", content_type=JSON)),
        "scale_a": allowed(post(client, f"/api/v1/services/{a}/scale", {"workers": 1})),
        "invoke_a": allowed(post(client, f"/api/v1/services/{a}/invoke?wait=0&queue=true", {})),
        "create": allowed(post(client, "/api/v1/services", {"name": "Not A Name"})),
        "gc": allowed(post(client, "/api/v1/gc", {"dry_run": True})),
        "tokens": allowed(client.get("/api/v1/tokens?all=true")),
        # Last: it deletes A when allowed (A has no worker).
        "delete_a": allowed(client.delete(f"/api/v1/services/{a}")),
    }
    assert {name for name, ok in results.items() if ok} == expected


def test_a_token_never_holds_more_than_its_user(world: World) -> None:
    dave = User.objects.create_user(username="dave")
    a = Service.objects.get(name=world.a)
    grant = usergrant_add(user=dave, role="deploy", service=a)
    with pytest.raises(DomainError) as beyond:
        apitoken_create(user=dave, name="wide", grants=[Grant(None, Role.READ)])
    assert beyond.value.status == 403
    with pytest.raises(DomainError) as unknown:
        apitoken_create(user=dave, name="nope", grants=[Grant("no-such", Role.READ)])
    assert unknown.value.status == 403  # beyond the user, before its existence is told
    _token, secret = apitoken_create(user=dave, name="narrow", grants=[Grant(a.name, Role.READ)])
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    assert client.get(f"/api/v1/services/{a.name}").status_code == 200
    # A narrower token cannot mint a wider one, nor manage tokens at all without admin.
    refused = post(client, "/api/v1/tokens", {"name": "x", "grants": [{"role": "deploy"}]})
    assert refused.status_code == 403
    # The user loses the grant: the token loses it too (the user's grants cap it).
    usergrant_delete(grant=grant)
    deadline = time.monotonic() + 10
    while client.get(f"/api/v1/services/{a.name}").status_code != 403:
        assert time.monotonic() < deadline, "a token kept a role its user lost"


def test_grant_changes_reach_the_fast_lane_within_the_cache_bound(
    world: World, settings: Any
) -> None:
    """Changed behind the process's back (no invalidation message): the TTL is the bound."""
    settings.MEMRUN_LOOKUP_CACHE_TTL_S = 1
    erin = User.objects.create_user(username="erin")
    a = Service.objects.get(name=world.a)
    usergrant_add(user=erin, role="invoke", service=a)
    _token, secret = apitoken_create(user=erin, name="app", grants=[Grant(a.name, Role.INVOKE)])
    path = f"/api/v1/services/{a.name}"
    assert (
        post(
            Client(headers={"Authorization": f"Bearer {secret}"}),
            f"{path}/invoke?wait=0&queue=true",
            {},
        ).status_code
        == 202
    )  # now cached
    UserGrant.objects.filter(user=erin).delete()  # no message
    deadline = time.monotonic() + settings.MEMRUN_LOOKUP_CACHE_TTL_S + 2
    while fast("POST", f"{path}/invoke", "wait=0&queue=true", secret, {})[0] != 403:
        assert time.monotonic() < deadline, "a removed grant still worked past the bound"


def test_tokens_api_creates_scoped_tokens_and_lists_their_grants(world: World) -> None:
    created = post(
        world.admin,
        "/api/v1/tokens",
        {"name": "svc", "grants": [{"service": world.a, "role": "invoke"}]},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["grants"] == [{"service": world.a, "role": "invoke"}]
    listed = {t["name"]: t for t in world.admin.get("/api/v1/tokens").json()}
    assert listed["svc"]["grants"] == [{"service": world.a, "role": "invoke"}]
    assert listed["tests"]["grants"] == [{"service": None, "role": "admin"}]
    bad_role = post(world.admin, "/api/v1/tokens", {"name": "r", "grants": [{"role": "owner"}]})
    assert bad_role.status_code == 422 and "roles are" in bad_role.json()["message"]
    missing = post(
        world.admin,
        "/api/v1/tokens",
        {"name": "m", "grants": [{"service": "no-such", "role": "read"}]},
    )
    assert missing.status_code == 404


def test_every_route_and_page_declares_what_it_needs() -> None:
    """A Need on every operation's auth (but the public and the worker-only routes), and
    on every page, so a route added later cannot forget it."""
    undeclared = []
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            for operation in path_view.operations:
                needs = [getattr(auth, "need", None) for auth in operation.auth_callbacks]
                for method in operation.methods:
                    key = (method, "/api/v1" + (prefix + path).replace("//", "/"))
                    public = key in WORKER_ONLY or key in PUBLIC
                    if not public and (not needs or None in needs[:2]):
                        undeclared.append(key)
    assert undeclared == []
    pages = [p for p in web_urls.urlpatterns if not hasattr(p.callback, "memrun_need")]
    assert pages == []


def test_the_tokens_page_shows_grants_and_creates_scoped_tokens(world: World, user: User) -> None:
    client = Client()
    client.force_login(user)
    created = client.post("/tokens/", {"name": "page-app", "role": "invoke", "service": world.a})
    assert created.status_code == 200, created.content
    page = created.content.decode()
    secret = re.search(r'id="token-secret">([^<]+)<', page)
    assert secret is not None
    assert f"invoke on {world.a}" in page  # in the list, beside the new token
    token = ApiToken.objects.get(name="page-app")
    assert set(token.grants.values_list("service__name", "role")) == {(world.a, "invoke")}
    app = Client(headers={"Authorization": f"Bearer {secret.group(1)}"})
    assert app.get(f"/api/v1/services/{world.a}").status_code == 403
    # A user cannot give a token more than it holds.
    frank = User.objects.create_user(username="frank")
    usergrant_add(user=frank, role="read", service=Service.objects.get(name=world.a))
    client.force_login(frank)
    refused = client.post("/tokens/", {"name": "wide", "role": "admin"})
    assert refused.status_code == 403
    assert "cannot hold more than frank" in refused.content.decode()
