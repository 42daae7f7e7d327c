"""Every route needs a bearer token or a session, except the few listed as public here.

The walk goes over the NinjaAPI's own OpenAPI description, so a route added later is
covered without touching this file; making one public means adding it to PUBLIC.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.services.models import ApiToken
from apps.services.tokens import apitoken_create, apitoken_revoke, usergrant_add
from memrun_site.api import api

pytestmark = pytest.mark.django_db

PUBLIC = {
    ("GET", "/api/v1/health"),
    # A remote worker's first boot: the open-source wheel, and the join (its token is
    # its credential).
    ("GET", "/api/v1/bootstrap/wheel"),
    ("POST", "/api/v1/workers/join"),
}
JSON = "application/json"


def all_operations() -> list[tuple[str, str]]:
    schema = api.get_openapi_schema(path_prefix="/api/v1/")
    operations = []
    for path, methods in schema["paths"].items():
        url = re.sub(r"\{[^}]+\}", "1", path)
        operations += [(method.upper(), url) for method in methods]
    return sorted(operations)


def call(client: Client, method: str, url: str, **headers: str):
    return client.generic(method, url, data="{}", content_type=JSON, headers=headers)


def test_the_walk_sees_the_routes() -> None:
    operations = all_operations()
    assert ("POST", "/api/v1/services") in operations
    assert ("DELETE", "/api/v1/tokens/1") in operations
    assert len(operations) >= 9


@pytest.mark.parametrize(
    "credentials",
    [{}, {"Authorization": "Bearer mr_not-a-real-token"}, {"Authorization": "Basic YTpi"}],
    ids=["none", "unknown-token", "basic"],
)
def test_every_route_but_the_public_ones_answers_401(credentials: dict[str, str]) -> None:
    client = Client()
    public = set()
    for method, url in all_operations():
        response = call(client, method, url, **credentials)
        if (method, url) in PUBLIC:
            public.add((method, url))
            assert response.status_code != 401
            continue
        assert response.status_code == 401, (method, url, response.content)
        assert response.json()["message"].startswith("authentication required")
        assert response["WWW-Authenticate"] == "Bearer"
    assert public == PUBLIC


def test_a_revoked_token_is_401(api_client: Client, api_token: tuple[ApiToken, str]) -> None:
    assert api_client.get("/api/v1/services").status_code == 200
    apitoken_revoke(token=api_token[0])
    assert api_client.get("/api/v1/services").status_code == 401


def test_session_reads_need_no_csrf_but_writes_do(user: User) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/v1/tokens").status_code == 200

    refused = client.post("/api/v1/tokens", {"name": "browser"}, content_type=JSON)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["message"]

    client.get("/admin/login/")  # any page with a form sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    accepted = client.post(
        "/api/v1/tokens", {"name": "browser"}, content_type=JSON, headers={"X-CSRFToken": csrf}
    )
    assert accepted.status_code == 201


def test_tokens_create_list_revoke(api_client: Client, user: User) -> None:
    created = api_client.post("/api/v1/tokens", {"name": "ci"}, content_type=JSON)
    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith(body["prefix"])

    listed = api_client.get("/api/v1/tokens").json()
    assert {t["name"] for t in listed} == {"tests", "ci"}
    assert all("secret" not in t for t in listed)

    fresh = Client(headers={"Authorization": f"Bearer {body['secret']}"})
    assert fresh.get("/api/v1/services").status_code == 200
    assert api_client.delete(f"/api/v1/tokens/{body['id']}").status_code == 204
    assert fresh.get("/api/v1/services").status_code == 401
    assert api_client.delete(f"/api/v1/tokens/{body['id']}").status_code == 404


def test_a_duplicate_token_name_is_409(api_client: Client) -> None:
    response = api_client.post("/api/v1/tokens", {"name": "tests"}, content_type=JSON)
    assert response.status_code == 409
    assert list(response.json()["details"]["fields"]) == ["name"]


def test_users_see_and_revoke_only_their_own_tokens(api_client: Client) -> None:
    bob = User.objects.create_user(username="bob")
    usergrant_add(user=bob, role="read", service=None)
    bobs, _secret = apitoken_create(user=bob, name="bob's")
    assert "bob's" not in {t["name"] for t in api_client.get("/api/v1/tokens").json()}
    assert api_client.delete(f"/api/v1/tokens/{bobs.pk}").status_code == 404
    bobs.refresh_from_db()
    assert bobs.is_active
