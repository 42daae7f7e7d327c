"""docker/: the compose file and the image agree with each other and with the settings.

No Docker engine runs here, so these read the files: every long-running service has a
health check, images are pinned, named volumes are declared, the variables given to the
appliance are ones the settings read and point at the services of the same file, and
every command picks a role the image's entrypoint knows.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
APPLIANCE_ROLES = ("appliance", "celery", "beat", "supervisor")
BACKING = ("kafka", "redis", "postgres", "s3")
# Read by libraries rather than by the settings module.
LIBRARY_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def entrypoint_roles() -> set[str]:
    """The top-level `case "$role"` labels of docker/entrypoint.sh."""
    text = (DOCKER / "entrypoint.sh").read_text()
    body = text.split('case "$role" in', 1)[1]
    return set(re.findall(r"^([a-z-]+)\)$", body, flags=re.MULTILINE))


def settings_env_names() -> set[str]:
    text = (ROOT / "memrun_site" / "settings.py").read_text()
    text += (ROOT / "memrun" / "home.py").read_text()
    return set(re.findall(r"""(?:env_\w+|environ\.get)\(\s*["']([A-Z0-9_]+)["']""", text))


def resolve(value: str) -> str:
    """`${NAME:-default}` -> default, `${NAME:?message}` -> NAME: as compose would see it
    with nothing set (a required value is only checked for its place)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{([A-Z_]+):\?[^}]*\}", r"\1", value)


def test_the_stack_has_every_part(services: dict[str, Any]) -> None:
    assert set(APPLIANCE_ROLES + BACKING) <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["s3"]["image"].startswith("andrewgaul/s3proxy:")


def test_long_running_services_have_health_checks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if service.get("restart") == "no":
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), (name, image)


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    used = {
        volume.split(":", 1)[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert used and used == set(compose["volumes"])
    for name in ("kafka", "redis", "postgres", "s3", "appliance"):
        assert services[name].get("volumes"), f"{name} keeps its data in a volume"


def test_kafka_runs_in_kraft_mode(services: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "ZOOKEEPER" not in " ".join(env)


def test_appliance_roles_share_image_and_environment(services: dict[str, Any]) -> None:
    first = services[APPLIANCE_ROLES[0]]
    for role in APPLIANCE_ROLES:
        assert services[role]["image"] == first["image"]
        assert services[role]["environment"] == first["environment"]
        assert services[role]["build"]["dockerfile"] == "docker/Dockerfile"


def test_appliance_environment_is_what_the_settings_read(services: dict[str, Any]) -> None:
    env = services["appliance"]["environment"]
    unknown = set(env) - settings_env_names() - LIBRARY_ENV
    assert not unknown, f"not read by memrun_site/settings.py: {sorted(unknown)}"
    assert env["DEBUG"] == "0"


def test_appliance_environment_points_at_the_stack(services: dict[str, Any]) -> None:
    env = {
        name: resolve(str(value)) for name, value in services["appliance"]["environment"].items()
    }
    database = urlsplit(env["DATABASE_URL"])
    postgres = services["postgres"]["environment"]
    assert (database.hostname, database.username) == ("postgres", postgres["POSTGRES_USER"])
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert database.password == resolve(postgres["POSTGRES_PASSWORD"])

    assert urlsplit(env["REDIS_URL"]).hostname == "redis"

    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == advertised.split("://", 1)[1]

    s3 = services["s3"]["environment"]
    assert urlsplit(env["MEMRUN_S3_ENDPOINT_URL"]).hostname == "s3"
    assert env["AWS_ACCESS_KEY_ID"] == s3["S3PROXY_IDENTITY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == resolve(s3["S3PROXY_CREDENTIAL"])
    assert urlsplit(env["MEMRUN_ARTIFACTS_URL"]).scheme == "s3"


def test_the_appliance_waits_for_its_dependencies(services: dict[str, Any]) -> None:
    depends = services["appliance"]["depends_on"]
    for name in ("kafka", "redis", "postgres"):
        assert depends[name]["condition"] == "service_healthy"
    for role in ("celery", "beat"):
        assert services[role]["depends_on"]["appliance"]["condition"] == "service_healthy"


def test_commands_pick_roles_the_entrypoint_knows(services: dict[str, Any]) -> None:
    roles = entrypoint_roles()
    assert {"web", "celery", "beat", "worker", "manage", "healthcheck"} <= roles
    dockerfile = (DOCKER / "Dockerfile").read_text()
    cmd = re.search(r"^CMD \[\"([a-z-]+)\"", dockerfile, flags=re.MULTILINE)
    assert cmd and cmd.group(1) in roles
    for name, service in services.items():
        if "command" in service and service["image"].startswith("memrun/"):
            assert service["command"][0] in roles, name
        health = service.get("healthcheck", {}).get("test", [])
        if "memrun-entrypoint" in health:
            assert health[health.index("memrun-entrypoint") + 1] in roles, name


def test_entrypoint_is_valid_shell_and_refuses_unknown_roles(tmp_path: Path) -> None:
    script = DOCKER / "entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    result = subprocess.run(
        ["sh", str(script), "no-such-role"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 64 and "unknown role" in result.stderr


def test_image_runs_as_an_unprivileged_user_and_installs_the_entrypoint() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^USER memrun$", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile, flags=re.MULTILINE)
    assert "docker/entrypoint.sh /usr/local/bin/memrun-entrypoint" in dockerfile
    assert 'ENTRYPOINT ["memrun-entrypoint"]' in dockerfile


def test_compose_runs_a_worker_runner_for_every_provider(services: dict[str, Any]) -> None:
    """Every provider the registry knows has what runs its workers in compose: `local`
    the supervisor, sharing memrun-home with Celery (reconcile writes the specs it
    reads); `hetzner` Celery's reconcile, with the HCLOUD_* settings it reads."""
    from apps.provisioning.provisioners import _BACKENDS

    assert set(_BACKENDS) == {"local", "hetzner"}
    roles = {name: service.get("command", [""])[0] for name, service in services.items()}
    [supervisor] = [name for name, role in roles.items() if role == "supervisor"]
    text = (DOCKER / "entrypoint.sh").read_text()
    body = text.split("\nsupervisor)\n", 1)[1].split(";;", 1)[0]
    assert "exec python -m apps.provisioning.local_supervisor" in body
    assert (ROOT / "apps" / "provisioning" / "local_supervisor.py").exists()
    home = "memrun-home:/var/lib/memrun"
    assert home in services[supervisor]["volumes"] and home in services["celery"]["volumes"]
    assert services["celery"]["environment"]["MEMRUN_HOME"] == "/var/lib/memrun"

    assert roles["celery"] == "celery" and roles["beat"] == "beat"
    env = services["celery"]["environment"]
    for name in ("HCLOUD_TOKEN", "HCLOUD_LOCATION", "HCLOUD_IMAGE", "HCLOUD_FIREWALL"):
        assert name in env, name
    assert resolve(env["HCLOUD_TOKEN"]) == ""  # optional: only hetzner services need it
    # A worker reaches the control plane by a name the web server accepts.
    control_plane = urlsplit(resolve(env["MEMRUN_CONTROL_PLANE_URL"])).hostname
    assert control_plane is not None and services[control_plane]["command"] == ["web"]
    assert control_plane in resolve(env["ALLOWED_HOSTS"]).split(",")
