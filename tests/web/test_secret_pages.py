"""The secrets pages: staff only, a set form with password inputs, a list of keys and
fingerprints; a value is never in a page, a refusal, or Django's error report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.views.debug import ExceptionReporter

from apps.services.models import Deployment, Secret
from apps.services.selectors import secret_env
from tests.web.test_pages import deploy_form, handler_source, home, staff

pytestmark = pytest.mark.django_db
__all__ = ["home", "staff"]
VALUE = "page-value-never-shown"


@pytest.fixture(autouse=True)
def _keys(home: Path, settings: Any) -> None:
    settings.MEMRUN_SECRETS_KEYS = [Fernet.generate_key().decode()]


def set_form(client: Client, name: str, **pairs: str) -> Any:
    return client.post(
        "/secrets/", {"name": name, "key": list(pairs), "value": list(pairs.values())}
    )


def test_set_list_attach_and_delete(staff: Client, service_name: Callable[[], str]) -> None:
    page = staff.get("/secrets/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'type="password" name="value"' in html and "No secrets yet." in html

    done = set_form(staff, "api-key", API_KEY=VALUE, OTHER="x")
    assert done.status_code == 302
    assert secret_env(names=("api-key",)) == {"API_KEY": VALUE, "OTHER": "x"}
    listed = staff.get("/secrets/")
    html = listed.content.decode()
    assert "secret api-key set: API_KEY, OTHER" in html
    secret = Secret.objects.get(name="api-key")
    assert secret.fingerprint in html and VALUE not in html

    name = service_name()
    deployed = deploy_form(staff, name, source=handler_source(name), secrets="api-key")
    assert deployed.status_code == 302, deployed.content.decode()
    deployment = Deployment.objects.get(service__name=name)
    assert deployment.config is not None and deployment.config.secrets == ("api-key",)
    assert f'href="/services/{name}/"' in staff.get("/secrets/").content.decode()
    service_page = staff.get(f"/services/{name}/").content.decode()
    assert "api-key" in service_page and VALUE not in service_page

    changed = set_form(staff, "api-key", API_KEY="new-" + VALUE)
    assert changed.status_code == 302
    said = staff.get("/secrets/").content.decode()
    assert f"rolling out again: {name}" in said and VALUE not in said

    in_use = staff.post("/secrets/api-key/delete/", follow=True)
    assert f"secret api-key is used by {name}" in in_use.content.decode()
    assert Secret.objects.filter(name="api-key").exists()


def test_a_refusal_keeps_the_keys_and_never_the_values(staff: Client) -> None:
    refused = set_form(staff, "bad", GOOD=VALUE, KAFKA_BOOTSTRAP_SERVERS=VALUE)
    assert refused.status_code == 422
    html = refused.content.decode()
    assert "KAFKA_BOOTSTRAP_SERVERS is set by memrun" in html
    assert 'value="GOOD"' in html and VALUE not in html
    assert not Secret.objects.exists()
    unknown = deploy_form(staff, "svc-x", source=handler_source("svc-x"), secrets="nowhere")
    assert unknown.status_code == 422 and "nowhere" in unknown.content.decode()


def test_only_staff_see_or_set_secrets(client: Client, django_user_model: Any) -> None:
    assert client.get("/secrets/").status_code == 302  # log in first
    someone = django_user_model.objects.create_user(username="bob")
    client.force_login(someone)
    assert client.get("/secrets/").status_code == 403
    assert set_form(client, "x1", A="b").status_code == 403
    assert client.post("/secrets/x1/delete/").status_code == 403
    assert not Secret.objects.exists()
    assert b"/secrets/" not in client.get("/dashboard/").content


def test_an_error_report_hides_the_posted_values_and_the_locals_holding_them(
    user: User, settings: Any
) -> None:
    from apps.web.secret_views import secrets

    # A broken key makes encrypting fail inside secret_set, with the values in its frames.
    settings.MEMRUN_SECRETS_KEYS = ["not-a-fernet-key"]
    request = RequestFactory().post("/secrets/", {"name": "x1", "key": ["A"], "value": [VALUE]})
    request.user = user
    with pytest.raises(Exception) as raised:
        secrets(request)
    assert "MEMRUN_SECRETS_KEYS" in str(raised.value) and VALUE not in str(raised.value)
    report = ExceptionReporter(request, raised.type, raised.value, raised.tb)
    text = report.get_traceback_text()
    html = report.get_traceback_html()
    assert "secret_encrypt" in text  # the frames are there, their values are not
    assert VALUE not in text and VALUE not in html
