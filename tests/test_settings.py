"""Settings come from the environment. Each case runs in a fresh Python, as a deployment
would: settings are read once, at import."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Variables the settings read; each case starts without any of them.
SETTINGS_ENV = (
    "MEMRUN_HOME",
    "DATABASE_URL",
    "REDIS_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "MEMRUN_ARTIFACTS_URL",
    "MEMRUN_S3_ENDPOINT_URL",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "MEMRUN_HTTPS",
    "MEMRUN_SERVE_STATIC",
    "DJANGO_SETTINGS_MODULE",
)
PRINT_SETTINGS = """
import json, sys, django
from django.conf import settings
django.setup()
print(json.dumps({name: str(getattr(settings, name, None)) for name in sys.argv[1:]}))
"""
DEPLOY_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "k3Y-" + "x7Qp9" * 12,
    "ALLOWED_HOSTS": "memrun.example.com",
    "MEMRUN_HTTPS": "1",
}


def run_python(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENV}
    clean |= {"MEMRUN_HOME": str(home), "DJANGO_SETTINGS_MODULE": "memrun_site.settings"}
    return subprocess.run(
        [sys.executable, *args],
        env=clean | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_with(home: Path, env: dict[str, str], *names: str) -> dict[str, str]:
    result = run_python(home, env, "-c", PRINT_SETTINGS, *names)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_deploy_passes_with_the_production_variables(tmp_path: Path) -> None:
    result = run_python(
        tmp_path, DEPLOY_ENV, "manage.py", "check", "--deploy", "--fail-level", "WARNING"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_fails_without_https(tmp_path: Path) -> None:
    env = DEPLOY_ENV | {"MEMRUN_HTTPS": "0"}
    result = run_python(tmp_path, env, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0
    assert "security.W008" in result.stderr + result.stdout


def test_defaults_live_under_memrun_home(tmp_path: Path) -> None:
    home = tmp_path / "fresh" / "home"
    values = settings_with(
        home,
        {},
        "DEBUG",
        "DATABASES",
        "REDIS_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "MEMRUN_ARTIFACTS_URL",
        "STATIC_ROOT",
        "ALLOWED_HOSTS",
        "CELERY_BROKER_URL",
    )
    assert home.is_dir()
    assert values["DEBUG"] == "False"
    assert str(home / "memrun.sqlite3") in values["DATABASES"]
    assert values["REDIS_URL"] == values["CELERY_BROKER_URL"] == "redis://127.0.0.1:16379/0"
    assert values["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert values["MEMRUN_ARTIFACTS_URL"] == (home / "artifacts").as_uri()
    assert values["STATIC_ROOT"] == str(home / "static")
    assert "localhost" in values["ALLOWED_HOSTS"]


def test_secret_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    first = settings_with(tmp_path, {}, "SECRET_KEY")["SECRET_KEY"]
    second = settings_with(tmp_path, {}, "SECRET_KEY")["SECRET_KEY"]
    assert first == second and len(first) >= 50
    key_file = tmp_path / "secret-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings_with(tmp_path, {"SECRET_KEY": "given"}, "SECRET_KEY")["SECRET_KEY"] == "given"


def test_services_and_hosts_from_the_environment(tmp_path: Path) -> None:
    values = settings_with(
        tmp_path,
        {
            "DATABASE_URL": "postgres://u:p@db.internal:5433/memrun",
            "REDIS_URL": "redis://cache:6379/2",
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
            "MEMRUN_ARTIFACTS_URL": "s3://bucket/prefix/",
            "MEMRUN_S3_ENDPOINT_URL": "http://s3:80",
            "ALLOWED_HOSTS": "a.example, b.example",
            "DEBUG": "yes",
        },
        "DATABASES",
        "REDIS_URL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "MEMRUN_ARTIFACTS_URL",
        "MEMRUN_S3_ENDPOINT_URL",
        "ALLOWED_HOSTS",
        "DEBUG",
    )
    assert "postgresql" in values["DATABASES"] and "db.internal" in values["DATABASES"]
    assert values["REDIS_URL"] == "redis://cache:6379/2"
    assert values["KAFKA_BOOTSTRAP_SERVERS"] == "k1:9092,k2:9092"
    assert values["MEMRUN_ARTIFACTS_URL"] == "s3://bucket/prefix"
    assert values["MEMRUN_S3_ENDPOINT_URL"] == "http://s3:80"
    assert values["ALLOWED_HOSTS"] == "['a.example', 'b.example']"
    assert values["DEBUG"] == "True"


def test_https_turns_on_secure_cookies_hsts_and_the_proxy_header(tmp_path: Path) -> None:
    names = ("SESSION_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER")
    off = settings_with(tmp_path, {}, *names)
    on = settings_with(tmp_path, {"MEMRUN_HTTPS": "1"}, *names, "SECURE_HSTS_SECONDS")
    assert off == {
        "SESSION_COOKIE_SECURE": "False",
        "SECURE_SSL_REDIRECT": "False",
        "SECURE_PROXY_SSL_HEADER": "None",
    }
    assert on["SESSION_COOKIE_SECURE"] == on["SECURE_SSL_REDIRECT"] == "True"
    assert on["SECURE_PROXY_SSL_HEADER"] == "('HTTP_X_FORWARDED_PROTO', 'https')"
    assert int(on["SECURE_HSTS_SECONDS"]) >= 31_536_000


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"MEMRUN_ARTIFACTS_URL": "ftp://host/x"}, "MEMRUN_ARTIFACTS_URL"),
        ({"MEMRUN_ARTIFACTS_URL": "s3://"}, "name the bucket"),
    ],
)
def test_bad_values_fail_at_start_naming_the_variable(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = run_python(tmp_path, env, "-c", PRINT_SETTINGS, "DEBUG")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and says in result.stderr


def test_beat_schedules_a_task_the_worker_knows() -> None:
    from django.conf import settings

    from memrun_site.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks
