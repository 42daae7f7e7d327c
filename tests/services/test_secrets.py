"""Per-service secrets: encrypted at rest with rotatable keys, validated, attached to a
service through its settings, injected into its workers' env only, and never shown again
(API, admin, errors)."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from django.test import Client

from apps.common.errors import DomainError
from apps.provisioning.specs import worker_spec_build
from apps.services.deployments import deployment_upload, service_patch
from apps.services.models import Deployment, Secret
from apps.services.secretbox import KEY_FILE_NAME, SecretUnreadable
from apps.services.secretstore import secret_delete, secret_set, secrets_reencrypt
from apps.services.selectors import secret_env
from apps.services.uploads import Upload
from apps.workers.services import worker_create
from tests.api.test_deployments_api import build

pytestmark = pytest.mark.django_db

VALUE = "s3cr3t-value-that-must-not-leak"


@pytest.fixture(autouse=True)
def keys(settings: Any, tmp_path: Path) -> list[str]:
    """A fresh MEMRUN_HOME and one Fernet key from the environment's setting."""
    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_HOME.mkdir()
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    settings.MEMRUN_SECRETS_KEYS = [Fernet.generate_key().decode()]
    return list(settings.MEMRUN_SECRETS_KEYS)


def raw_row(name: str) -> str:
    """The secret's row as the database holds it, every column as text."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT * FROM {Secret._meta.db_table} WHERE name = %s",
            [name],
        )
        return repr(cursor.fetchone())


@pytest.fixture
def deploy(
    tmp_path: Path, service_name: Callable[[], str], user: Any
) -> Iterator[Callable[..., Deployment]]:
    """`deploy(**overrides) -> Deployment`: v1 of a new service, uploaded for real."""

    def new(**overrides: Any) -> Deployment:
        name = service_name()
        path = tmp_path / f"upload-{name}"
        path.write_bytes(build(tmp_path, name))
        upload = Upload(
            path=path, size_bytes=path.stat().st_size, filename="", is_source=False, message=""
        )
        return deployment_upload(
            service_name=name, upload=upload, created_by=user, overrides=overrides
        )

    yield new


def test_the_database_never_holds_the_plaintext(user: Any) -> None:
    secret, rolled = secret_set(name="s3-data", values={"TOKEN": VALUE}, user=user)
    assert rolled == []
    row = raw_row("s3-data")
    assert VALUE not in row and "TOKEN" in row
    assert secret.keys == ["TOKEN"] and len(secret.fingerprint) == 12
    assert VALUE not in secret.ciphertext
    assert secret_env(names=("s3-data",)) == {"TOKEN": VALUE}


def test_keys_rotate_with_multifernet(settings: Any, keys: list[str], user: Any) -> None:
    secret_set(name="rotating", values={"A": VALUE}, user=user)
    old_ciphertext = Secret.objects.get(name="rotating").ciphertext
    new_key = Fernet.generate_key().decode()
    settings.MEMRUN_SECRETS_KEYS = [new_key, *keys]
    # The old key still opens it; re-encrypting moves it to the new key.
    assert secret_env(names=("rotating",)) == {"A": VALUE}
    assert secrets_reencrypt(user=user) == 1
    out = io.StringIO()
    call_command("secrets_reencrypt", stdout=out)
    assert out.getvalue().strip() == "re-encrypted 1 secret(s) with the newest key"
    assert Secret.objects.get(name="rotating").ciphertext != old_ciphertext
    settings.MEMRUN_SECRETS_KEYS = [new_key]
    assert secret_env(names=("rotating",)) == {"A": VALUE}
    settings.MEMRUN_SECRETS_KEYS = keys
    with pytest.raises(SecretUnreadable, match="rotating") as refusal:
        secret_env(names=("rotating",))
    assert VALUE not in str(refusal.value)


def test_without_configured_keys_one_is_made_in_memrun_home_0600(settings: Any, user: Any) -> None:
    settings.MEMRUN_SECRETS_KEYS = []
    secret_set(name="local", values={"A": VALUE}, user=user)
    path = Path(settings.MEMRUN_HOME) / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    Fernet(path.read_bytes().strip())
    assert secret_env(names=("local",)) == {"A": VALUE}


@pytest.mark.parametrize(
    ("key", "phrase"),
    [
        ("MEMRUN_WORKER_TOKEN", "MEMRUN_WORKER_TOKEN is set by memrun"),
        ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS is set by memrun"),
        ("REDIS_URL", "REDIS_URL is set by memrun"),
        ("PATH", "PATH is set by memrun"),
        ("PYTHONPATH", "PYTHONPATH is set by memrun"),
        ("LD_PRELOAD", "LD_PRELOAD is set by memrun"),
        ("SSL_CERT_FILE", "SSL_CERT_FILE is set by memrun"),
        ("1ABC", "'1ABC' is not an environment variable name"),
        ("A-B", "'A-B' is not an environment variable name"),
    ],
)
def test_a_bad_key_is_a_422_naming_it_and_never_the_value(key: str, phrase: str, user: Any) -> None:
    with pytest.raises(DomainError) as refusal:
        secret_set(name="bad", values={"FINE": "x", key: VALUE}, user=user)
    assert refusal.value.status == 422
    assert phrase in refusal.value.message
    assert list(refusal.value.details["fields"]) == [key]
    assert VALUE not in repr((refusal.value.message, refusal.value.details))
    assert not Secret.objects.filter(name="bad").exists()


@pytest.mark.parametrize(
    ("name", "values", "phrase"),
    [
        ("Bad_Name", {"A": "x"}, "secret name 'Bad_Name' is not valid"),
        ("empty", {}, "one or more KEY=VALUE pairs"),
        ("nul", {"A": "x\0y"}, "the value of A holds a NUL character"),
        ("big", {"A": "x" * 40_000}, "the value of A is longer than"),
    ],
)
def test_bad_names_and_values_are_refused(
    name: str, values: dict[str, str], phrase: str, user: Any
) -> None:
    with pytest.raises(DomainError) as refusal:
        secret_set(name=name, values=values, user=user)
    assert refusal.value.status == 422 and phrase in refusal.value.message


def test_only_staff_manage_secrets(django_user_model: Any) -> None:
    someone = django_user_model.objects.create_user(username="bob")
    with pytest.raises(DomainError) as refusal:
        secret_set(name="x1", values={"A": "b"}, user=someone)
    assert refusal.value.status == 403


def test_deploying_with_an_unknown_secret_is_refused_before_anything_is_stored(
    deploy: Callable[..., Deployment], settings: Any
) -> None:
    with pytest.raises(DomainError) as refusal:
        deploy(secrets=["nowhere"])
    assert refusal.value.status == 422
    assert "nowhere" in refusal.value.message
    assert refusal.value.details["fields"]["secrets"] == ["no secret named nowhere"]
    artifacts = Path(settings.MEMRUN_ARTIFACTS_URL.removeprefix("file://"))
    assert not artifacts.exists() or not any(artifacts.rglob("*.tar.gz"))
    assert not Deployment.objects.exists()


def test_a_secret_is_attached_by_name_and_reaches_only_that_services_workers(
    deploy: Callable[..., Deployment], user: Any, settings: Any
) -> None:
    secret_set(name="s3-data", values={"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": VALUE})
    settings.MEMRUN_WORKER_RESULTS_ENV = {}
    with_secret = deploy(secrets=["s3-data"])
    without = deploy()
    assert with_secret.config is not None and with_secret.config.secrets == ("s3-data",)
    assert with_secret.manifest["config"]["secrets"] == ["s3-data"]
    envs = {}
    for deployment in (with_secret, without):
        worker, credential = worker_create(
            service=deployment.service, deployment=deployment, name=f"{deployment.service}-w"
        )
        spec = worker_spec_build(
            worker=worker,
            credential=credential,
            service=deployment.service,
            deployment=deployment,
        )
        envs[deployment.service.name] = spec.env
    env_a = envs[with_secret.service.name]
    env_b = envs[without.service.name]
    assert env_a["AWS_SECRET_ACCESS_KEY"] == VALUE
    assert env_a["MEMRUN_SECRET_KEYS"] == "AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY"
    # The appliance's own S3 keys reach no worker: only a secret gives AWS_*.
    assert os.environ.get("AWS_SECRET_ACCESS_KEY")
    assert not any(key.startswith("AWS_") for key in env_b)
    assert env_b["MEMRUN_SECRET_KEYS"] == ""
    assert VALUE not in repr(env_b)


def test_attaching_by_patch_and_changing_values_roll_the_service(
    deploy: Callable[..., Deployment], user: Any
) -> None:
    v1 = deploy()
    secret_set(name="api-key", values={"KEY": "one"}, user=user)
    service = service_patch(service=v1.service, data={"secrets": ["api-key"]}, created_by=user)
    v2 = service.live_deployment
    assert v2 is not None and v2.version == 2 and v2.config is not None
    assert v2.config.secrets == ("api-key",)
    assert "secrets none -> api-key" in v2.message
    # The same values again: nothing rolls.
    assert secret_set(name="api-key", values={"KEY": "one"}, user=user)[1] == []
    secret, rolled = secret_set(name="api-key", values={"KEY": "two"}, user=user)
    assert [d.version for d in rolled] == [3]
    assert rolled[0].message == "secret api-key changed"
    assert (rolled[0].sha256, rolled[0].config) == (v2.sha256, v2.config)
    assert secret.services == [v1.service.name]  # type: ignore[attr-defined]


def test_a_secret_in_use_cannot_be_deleted(deploy: Callable[..., Deployment], user: Any) -> None:
    secret_set(name="in-use", values={"A": "b"}, user=user)
    deployment = deploy(secrets=["in-use"])
    with pytest.raises(DomainError) as refusal:
        secret_delete(name="in-use", user=user)
    assert refusal.value.status == 409
    assert deployment.service.name in refusal.value.message
    assert refusal.value.details["services"] == [deployment.service.name]
    service_patch(service=deployment.service, data={"secrets": []}, created_by=user)
    # The older version is superseded once the new one rolls out; until then it is live.
    Deployment.objects.filter(pk=deployment.pk).update(status="superseded")
    secret_delete(name="in-use", user=user)
    assert not Secret.objects.filter(name="in-use").exists()
    with pytest.raises(DomainError) as missing:
        secret_delete(name="in-use", user=user)
    assert missing.value.status == 404


def test_the_api_lists_keys_and_fingerprints_never_values(
    api_client: Client, deploy: Callable[..., Deployment], user: Any
) -> None:
    answer = api_client.put(
        "/api/v1/secrets/api-key",
        {"values": {"KEY": VALUE, "OTHER": "x"}},
        content_type="application/json",
    )
    assert answer.status_code == 200, answer.content
    assert VALUE.encode() not in answer.content
    body = answer.json()
    assert (body["keys"], body["services"], body["rolled"]) == (["KEY", "OTHER"], [], [])
    deployment = deploy(secrets=["api-key"])
    listed = api_client.get("/api/v1/secrets")
    assert VALUE.encode() not in listed.content
    [item] = listed.json()
    assert item["name"] == "api-key" and item["fingerprint"] == body["fingerprint"]
    assert item["services"] == [deployment.service.name]
    one = api_client.get("/api/v1/secrets/api-key").json()
    assert one["services"] == [deployment.service.name]
    changed = api_client.put(
        "/api/v1/secrets/api-key", {"values": {"KEY": "new"}}, content_type="application/json"
    ).json()
    assert changed["rolled"] == [deployment.service.name]
    assert changed["fingerprint"] != body["fingerprint"]
    refused = api_client.put(
        "/api/v1/secrets/api-key",
        {"values": {"REDIS_URL": VALUE}},
        content_type="application/json",
    )
    assert refused.status_code == 422 and b"REDIS_URL" in refused.content
    assert VALUE.encode() not in refused.content
    not_text = api_client.put(
        "/api/v1/secrets/api-key", {"values": {"A": 5}}, content_type="application/json"
    )
    assert not_text.status_code == 422
    in_use = api_client.delete("/api/v1/secrets/api-key")
    assert in_use.status_code == 409
    assert deployment.service.name in in_use.json()["message"]


def test_the_api_is_for_staff_only(client: Client, django_user_model: Any) -> None:
    from apps.services.tokens import apitoken_create, usergrant_add

    someone = django_user_model.objects.create_user(username="bob")
    usergrant_add(user=someone, role="deploy", service=None)
    _, secret = apitoken_create(user=someone, name="t")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/secrets", headers=headers).status_code == 403
    put = client.put(
        "/api/v1/secrets/x1",
        {"values": {"A": "b"}},
        content_type="application/json",
        headers=headers,
    )
    assert put.status_code == 403
    assert client.get("/api/v1/secrets").status_code == 401


def test_the_api_is_documented(client: Client) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert set(paths["/api/v1/secrets/{name}"]) >= {"get", "put", "delete"}
    assert "get" in paths["/api/v1/secrets"]


def test_the_admin_shows_keys_never_values(client: Client, django_user_model: Any) -> None:
    admin = django_user_model.objects.create_superuser(username="root", password="x")
    secret, _ = secret_set(name="shown", values={"SHOWN_KEY": VALUE}, user=admin)
    client.force_login(admin)
    listing = client.get("/admin/services/secret/")
    page = client.get(f"/admin/services/secret/{secret.pk}/change/")
    for response in (listing, page):
        assert response.status_code == 200
        assert b"SHOWN_KEY" in response.content and secret.fingerprint.encode() in response.content
        assert VALUE.encode() not in response.content
        assert secret.ciphertext.encode() not in response.content
    assert client.get("/admin/services/secret/add/").status_code == 403


def test_only_admins_on_all_attach_secrets(
    deploy: Callable[..., Deployment], user: Any, tmp_path: Path
) -> None:
    """A deploy role on one service does not reach other secrets: attaching one (by PATCH
    or by deploying) needs admin on all; what is attached already stays deployable."""
    from apps.common.permissions import Access, Grant, Role

    v1 = deploy()
    service = v1.service
    secret_set(name="admin-only", values={"A": VALUE}, user=user)
    deployer = Access(who="bob", grants=frozenset({Grant(service.name, Role.ADMIN)}))
    with pytest.raises(DomainError) as refusal:
        service_patch(service=service, data={"secrets": ["admin-only"]}, access=deployer)
    assert refusal.value.status == 403
    assert "admin role on all services to attach the secrets admin-only" in (refusal.value.message)
    path = tmp_path / "again"
    path.write_bytes(build(tmp_path, service.name))
    upload = Upload(
        path=path, size_bytes=path.stat().st_size, filename="", is_source=False, message=""
    )
    with pytest.raises(DomainError) as by_deploy:
        deployment_upload(
            service_name=service.name,
            upload=upload,
            overrides={"secrets": ["admin-only"]},
            access=deployer,
        )
    assert by_deploy.value.status == 403
    assert service.deployments.count() == 1
    admin = Access(who="root", grants=frozenset({Grant(None, Role.ADMIN)}))
    service_patch(service=service, data={"secrets": ["admin-only"]}, access=admin)
    # Attached by an admin: the deployer may deploy with it and change other settings.
    deployment_upload(
        service_name=service.name,
        upload=upload,
        overrides={"secrets": ["admin-only"]},
        access=deployer,
    )
    service_patch(service=service, data={"concurrency": 3}, access=deployer)
    assert service.deployments.count() == 4
