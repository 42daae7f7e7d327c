"""Secrets stay with their service, end to end with real processes (the supervisor as
`memrun up` runs it, sandboxed): a hostile service A, deployed next to a service B that
has a secret, finds none of B's values and none of the appliance's S3 keys in its env, in
other processes' /proc/PID/environ, in B's spec file, the secrets key file or the
database; it cannot fetch B's package nor list the artifact store's bucket; and B keeps
answering with its secret in use.

s3proxy, the S3 server here, has a single identity: "a handler's own S3 keys" are the
dev credentials in a secret (tests/fixtures/django.py `s3_secret`), which is exactly as
much S3 as the appliance has. What this pins is the path (keys reach a worker only
through its service's secrets); per-handler S3 scoping needs an S3 server with several
identities and bucket policies.
"""

from __future__ import annotations

import hashlib
import os
import secrets as stdlib_secrets
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.test import Client as DjangoClient

from apps.provisioning.local_layout import LocalLayout, read_json
from apps.services.models import Deployment
from apps.services.secretbox import KEY_FILE_NAME
from apps.services.secretstore import secret_set
from apps.workers.services import worker_create
from tests.provisioning import test_end_to_end as e2e
from tests.provisioning.test_end_to_end import Scenario

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
worker_grace_period_s, eager_celery, supervisor, scenario = (
    e2e.worker_grace_period_s,
    e2e.eager_celery,
    e2e.supervisor,
    e2e.scenario,
)
HANDLERS = Path(__file__).parent / "handlers"
HOSTILE = HANDLERS / "hostile_secrets.py"


def answer(service: Scenario, payload: dict[str, Any]) -> Any:
    [outcome] = service.outcomes([service.submit_payload(payload, sticky_template="user")])
    assert outcome.ok, outcome
    return outcome.result


def deploy_live(service: Scenario, **overrides: Any) -> tuple[Deployment, str]:
    deployment = service.deploy(HOSTILE, **overrides)
    service.until(lambda: service.status(deployment) == "active", f"{service.name} to be live")
    [worker] = service.workers("ready")
    return deployment, str(worker.name)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (the worker's bwrap and what runs inside)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def test_a_hostile_service_cannot_reach_another_services_secrets(
    scenario: Scenario,
    supervisor: subprocess.Popen[bytes],
    service_name: Any,
    settings: Any,
    s3_settings: Any,
) -> None:
    # The key file in MEMRUN_HOME, not the environment: that is what must stay hidden.
    settings.MEMRUN_SECRETS_KEYS = []
    b_value = "b-only-" + stdlib_secrets.token_hex(16)
    secret_set(name="b-secret", values={"B_TOKEN": b_value})
    key_file = Path(settings.MEMRUN_HOME) / KEY_FILE_NAME
    assert key_file.read_bytes()

    bystander = Scenario(
        service_name(), scenario.home, scenario.tmp, scenario.redis, scenario.client
    )
    b_deployment, b_worker = deploy_live(bystander, secrets=["b-secret"])
    a_deployment, _a_worker = deploy_live(scenario)
    b_sha = hashlib.sha256(b_value.encode()).hexdigest()
    assert answer(bystander, {"user": 1, "hash_of": "B_TOKEN"})["sha256"] == b_sha

    layout = LocalLayout(scenario.home)
    b_status = read_json(layout.status_path(b_worker)) or {}
    b_pids = descendants(int(b_status["pid"]))
    environs = [f"/proc/{pid}/environ" for pid in [*b_pids, os.getpid(), supervisor.pid]]
    # Each is readable to the appliance, and B's worker env does hold the value.
    assert any(b_value.encode() in Path(path).read_bytes() for path in environs)
    assert b_value in layout.spec_path(b_worker).read_text()
    files = [
        str(key_file),
        str(layout.spec_path(b_worker)),
        str(scenario.home / "secret-key"),
        *environs,
    ]
    database = urlsplit(os.environ["DATABASE_URL"])
    appliance_s3_key = os.environ["AWS_SECRET_ACCESS_KEY"]
    probe = {
        "files": files,
        "deployments": [b_deployment.pk, a_deployment.pk],
        "s3": s3_settings.endpoint_url,
        "bucket": s3_settings.bucket,
        # The database's address and user, never its password: A has no way to learn it.
        "database": f"postgresql://{database.username}@{database.hostname}:{database.port}"
        f"{database.path}",
    }
    seen = answer(scenario, {"user": 2, "probe": probe})

    # A's own env: its own settings, none of B's values, no appliance keys.
    env = seen["env"]
    assert env["MEMRUN_SERVICE"] == scenario.name
    assert not any(b_value in value for value in env.values())
    assert not any(key.startswith("AWS_") for key in env), sorted(env)
    assert appliance_s3_key not in env.values()
    assert not {"DATABASE_URL", "SECRET_KEY", "MEMRUN_SECRETS_KEYS"} & set(env)
    # Every environ A can read at all is its own sandbox's, and holds nothing of B's.
    assert not any(b_value in data for data in seen["environs"].values())
    assert not any(appliance_s3_key in data for data in seen["environs"].values())
    # Nothing of the appliance's or B's opens.
    assert {path for path, outcome in seen["files"].items() if outcome["read"]} == set()
    # Its own package, yes; B's, no.
    assert seen["packages"] == {str(b_deployment.pk): 403, str(a_deployment.pk): 200}
    # The artifact store's bucket: no credentials to sign with, and anonymous is refused.
    assert seen["bucket"]["no_credentials"] == {"listed": False, "error": "NoCredentialsError"}
    assert seen["bucket"]["anonymous"]["listed"] is False
    assert seen["database"]["connected"] is False

    # B keeps answering with its secret in use, and A keeps serving.
    assert answer(bystander, {"user": 3, "hash_of": "B_TOKEN"}) == {
        "sha256": b_sha,
        "worker": b_worker,
    }
    assert "worker" in answer(scenario, {"user": 4})


def test_a_workers_token_fetches_only_its_own_services_packages(
    service_factory: Any, deploy_settings: Any, client: DjangoClient
) -> None:
    a, b = service_factory(), service_factory()
    a_deployment, b_deployment = deploy_settings(a), deploy_settings(b)
    _, a_token = worker_create(service=a, deployment=a_deployment, name=f"{a.name}-w")
    headers = {"Authorization": f"Bearer {a_token}"}
    theirs = client.get(f"/api/v1/deployments/{b_deployment.pk}/package", headers=headers)
    assert theirs.status_code == 403
    assert b.name in theirs.json()["message"]
    missing = client.get("/api/v1/deployments/999999/package", headers=headers)
    assert missing.status_code == 404
    assert django_settings.MEMRUN_WORKER_RESULTS_ENV.keys() <= {"MEMRUN_S3_BUCKET"}
