"""Password logins are rate-limited by django-axes: the Nth bad password for a username
from one address locks that pair out, even with the right password after it, while the
same password elsewhere is unaffected."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"


def attempt(client: Client, username: str, password: str, ip: str, login: str = LOGIN) -> Any:
    return client.post(login, {"username": username, "password": password}, REMOTE_ADDR=ip)


@pytest.mark.parametrize("login", ["/admin/login/", "/login/"], ids=["admin", "web-ui"])
def test_the_nth_bad_password_locks_out_that_username_from_that_address(
    settings: Any, login: str
) -> None:
    User.objects.create_user(username="ops", password="right-horse-battery", is_staff=True)
    client = Client()
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        refused = attempt(client, "ops", "wrong", "127.0.0.11", login)
        assert refused.status_code == 200 and refused.context["form"].errors
        assert "_auth_user_id" not in client.session
    locked = attempt(client, "ops", "wrong", "127.0.0.11", login)
    assert locked.status_code == 429
    # Locked out: now even the right password is refused from there...
    assert attempt(client, "ops", "right-horse-battery", "127.0.0.11", login).status_code == 429
    assert "_auth_user_id" not in client.session
    # ...but not from another address.
    elsewhere = Client()
    answer = attempt(elsewhere, "ops", "right-horse-battery", "127.0.0.12", login)
    assert answer.status_code == 302
    assert "_auth_user_id" in elsewhere.session


def test_a_success_resets_the_count(settings: Any) -> None:
    User.objects.create_user(username="dev", password="right-horse-battery", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt(Client(), "dev", "wrong", "127.0.0.13")
    assert attempt(Client(), "dev", "right-horse-battery", "127.0.0.13").status_code == 302
    assert attempt(Client(), "dev", "wrong", "127.0.0.13").status_code == 200
