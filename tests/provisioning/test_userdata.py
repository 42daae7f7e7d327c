"""A remote worker's cloud-init user-data: valid for cloud-init, under Hetzner's 32 KiB,
pinning this appliance's wheel, and holding no secret but its single-use join token."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps.provisioning.provisioners import WorkerSpec

pytestmark = pytest.mark.django_db


@pytest.fixture
def spec(service_factory: Any, deploy_settings: Any, hetzner_standin: Any) -> WorkerSpec:
    from apps.provisioning.specs import worker_spec_build
    from apps.workers.services import worker_create

    service = service_factory(provider="hetzner")
    deployment = deploy_settings(service, status="active")
    worker, credential = worker_create(
        service=service, deployment=deployment, name=f"{service.name}-v1-abc123", provider="hetzner"
    )
    return worker_spec_build(
        worker=worker, credential=credential, service=service, deployment=deployment
    )


def test_user_data_passes_cloud_inits_schema_and_stays_under_32_kib(
    spec: WorkerSpec, tmp_path: Path
) -> None:
    from apps.provisioning.userdata import MAX_USER_DATA_BYTES, worker_user_data

    user_data = worker_user_data(spec=spec, server_name=f"mr-{spec.name}")
    assert len(user_data.encode()) < MAX_USER_DATA_BYTES == 32 * 1024
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, "cloud-init is missing: scripts/install installs Debian's package"

    def schema_check(text: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "user-data.yaml"
        path.write_text(text)
        return subprocess.run(
            [cloud_init, "schema", "--config-file", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    checked = schema_check(user_data)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Valid cloud-config" in checked.stdout
    # The check can fail: a malformed runcmd is refused.
    assert schema_check(user_data.replace("runcmd:\n", "runcmd: 5\nx:\n")).returncode != 0


def test_user_data_pins_the_appliances_wheel_and_starts_the_worker_under_systemd(
    spec: WorkerSpec, settings: Any, client: Any
) -> None:
    from apps.provisioning.userdata import worker_user_data

    config = yaml.safe_load(worker_user_data(spec=spec, server_name="mr-x"))
    files = {entry["path"]: entry for entry in config["write_files"]}
    pinned_sha256, pinned_path = files["/opt/memrun/wheel.sha256"]["content"].split()

    # The wheel the appliance serves is the one pinned, at this memrun's version.
    response = client.get("/api/v1/bootstrap/wheel")
    assert response.status_code == 200
    served = b"".join(response.streaming_content)
    assert hashlib.sha256(served).hexdigest() == pinned_sha256 == response["X-Memrun-Sha256"]
    import importlib.metadata

    assert Path(pinned_path).name.startswith(f"memrun-{importlib.metadata.version('memrun')}-")
    downloads = [step for step in config["runcmd"] if step[0] == "curl"]
    assert downloads == [[*downloads[0][:-3], "--output", pinned_path, downloads[0][-1]]]
    assert downloads[0][-1] == f"{settings.MEMRUN_CONTROL_PLANE_URL}/api/v1/bootstrap/wheel"

    unit = files["/etc/systemd/system/memrun-worker.service"]["content"]
    for line in (
        "Restart=on-failure",
        "StartLimitBurst=5",
        "StandardOutput=journal",
        "User=memrun",
        "EnvironmentFile=/etc/memrun/worker.env",
        "Environment=MEMRUN_CACHE_ROOT=/var/lib/memrun/cache",
        f"ExecStart=/opt/memrun/venv/bin/memrun worker --service {spec.service} "
        f"--deployment {spec.deployment_id}",
    ):
        assert line in unit.splitlines()
    assert files["/etc/memrun/join-token"]["permissions"] == "0600"
    assert config["runcmd"][-1] == ["systemctl", "enable", "--now", "memrun-worker.service"]
    assert any(user.get("name") == "memrun" for user in config["users"] if isinstance(user, dict))


def test_each_rendering_issues_one_join_token_bound_to_the_worker(spec: WorkerSpec) -> None:
    from apps.common.credentials import secret_hash
    from apps.provisioning.models import JoinToken
    from apps.provisioning.userdata import worker_user_data

    tokens = [_join_token(worker_user_data(spec=spec, server_name="mr-x")) for _ in range(2)]
    assert tokens[0] != tokens[1] and all(t.startswith("mrj_") for t in tokens)
    rows = JoinToken.objects.filter(worker_name=spec.name).order_by("pk")
    assert [row.token_hash for row in rows] == [secret_hash(t) for t in tokens]
    assert all(token not in row.token_hash for row in rows for token in tokens)
    ttl = rows[0].expires_at - rows[0].created_at
    assert 0 < ttl.total_seconds() <= 3600


def test_user_data_holds_no_credential_of_the_appliance(
    spec: WorkerSpec, settings: Any, api_token: tuple[Any, str]
) -> None:
    """Everything secret the appliance holds, each set to a known value where it is not
    already: none is in the rendered user-data, nor is the worker's own credential."""
    from apps.provisioning.userdata import worker_user_data

    settings.HCLOUD_TOKEN = "hcloud-" + "h" * 56
    settings.SECRET_KEY = "django-secret-" + "s" * 40
    # The spec is rebuilt against the real brokers, so their real passwords stay (and are
    # scanned for); only where there is none (no authentication) is a known one made up.
    if not urllib.parse.urlsplit(settings.REDIS_URL).password:
        settings.REDIS_URL = "redis://memrun-control:redis-control-password@127.0.0.1:16379/0"
    if not settings.KAFKA_SASL_PASSWORD:
        settings.KAFKA_SASL_PASSWORD = "kafka-control-password"
    settings.MEMRUN_WORKER_S3_ENV = {
        "AWS_ACCESS_KEY_ID": "appliance-access-key-id",
        "AWS_SECRET_ACCESS_KEY": "appliance-secret-access-key",
    }
    admin_token = api_token[1]
    spec = _rebuilt(spec)
    secrets = {
        "admin API token": admin_token,
        "worker credential": spec.env["MEMRUN_WORKER_TOKEN"],
        "HCLOUD_TOKEN": settings.HCLOUD_TOKEN,
        "SECRET_KEY": settings.SECRET_KEY,
        # The test database's password is a common word: its URL and user:password pair
        # are what must not appear.
        "DATABASE_URL": os.environ.get("DATABASE_URL", ""),
        "database user:password": "{USER}:{PASSWORD}@".format(**settings.DATABASES["default"]),
        "Redis password": urllib.parse.urlsplit(settings.REDIS_URL).password or "",
        "Kafka password": settings.KAFKA_SASL_PASSWORD,
        **{name: value for name, value in settings.MEMRUN_WORKER_S3_ENV.items()},
        **{
            f"settings.{name}": str(getattr(settings, name))
            for name in dir(settings)
            if re.search(r"SECRET|PASSWORD|TOKEN|_KEY$", name)
            and isinstance(getattr(settings, name), str)
        },
        **{
            f"spec env {name}": value
            for name, value in spec.env.items()
            if re.search(r"SECRET|PASSWORD|TOKEN|_KEY", name)
        },
    }
    secrets = {what: value for what, value in secrets.items() if len(value) >= 6}
    assert {"admin API token", "worker credential", "HCLOUD_TOKEN", "SECRET_KEY"} <= set(secrets)

    user_data = worker_user_data(spec=spec, server_name=f"mr-{spec.name}")
    found = [what for what, value in secrets.items() if value in user_data]
    assert found == []
    # The one secret: its join token, once, and no other bearer token of any kind.
    bearer = re.findall(r"\bmr[a-z]?_[A-Za-z0-9_-]{20,}", user_data)
    assert bearer == [_join_token(user_data)]


def _rebuilt(spec: WorkerSpec) -> WorkerSpec:
    """`spec` again, with the settings as the test changed them."""
    from apps.provisioning.specs import worker_spec_build
    from apps.workers.models import Worker

    worker = Worker.objects.select_related("service", "deployment").get(name=spec.name)
    assert worker.deployment is not None
    return worker_spec_build(
        worker=worker,
        credential=spec.env["MEMRUN_WORKER_TOKEN"],
        service=worker.service,
        deployment=worker.deployment,
    )


def _join_token(user_data: str) -> str:
    files = {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}
    return str(files["/etc/memrun/join-token"])
