"""`memrun secret set|list|delete` and `memrun deploy --secret` against a live control
plane: values go in, and never come out again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from apps.services.models import Deployment
from apps.services.selectors import secret_env
from memrun.cli.secret import read_env_file
from tests.memrun.cli import control_plane, memrun, write_handler

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["control_plane"]

VALUE = "v4lue-never-printed"


@pytest.fixture(autouse=True)
def _keys(settings: Any) -> None:
    settings.MEMRUN_SECRETS_KEYS = [Fernet.generate_key().decode()]


def test_set_list_deploy_and_delete(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env_file = tmp_path / "s3.env"
    env_file.write_text(
        f"# the dev s3proxy\nexport AWS_ACCESS_KEY_ID=memrun\nAWS_SECRET_ACCESS_KEY='{VALUE}'\n\n"
    )
    code, out, err = memrun(
        capsys, "secret", "set", "s3-data", "EXTRA=1", "--from-env-file", str(env_file)
    )
    assert code == 0, err
    assert "secret s3-data set: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, EXTRA" in out
    assert secret_env(names=("s3-data",))["AWS_SECRET_ACCESS_KEY"] == VALUE

    name = service_name()
    code, out, err = memrun(
        capsys, "deploy", str(write_handler(tmp_path, name)), "--secret", "s3-data", "--no-wait"
    )
    assert code == 0, err
    deployment = Deployment.objects.get(service__name=name)
    assert deployment.config is not None and deployment.config.secrets == ("s3-data",)

    code, out, err = memrun(capsys, "secret", "list")
    assert code == 0 and VALUE not in out + err
    [header, row] = out.strip().splitlines()
    assert header.split() == ["NAME", "KEYS", "FINGERPRINT", "UPDATED", "SERVICES"]
    assert row.startswith("s3-data") and row.endswith(name)

    code, _, err = memrun(capsys, "secret", "delete", "s3-data")
    assert code == 1 and err.startswith("memrun: error: secret s3-data is used by " + name)
    code, out, err = memrun(capsys, "secret", "set", "s3-data", "EXTRA=2")
    assert code == 0, err
    assert f"rolling out again with the new values: {name}" in out


def test_unknown_secret_on_deploy_and_bad_pairs_are_one_line(
    control_plane: list[int],
    service_name: Callable[[], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = service_name()
    handler = write_handler(tmp_path, name)
    code, _, err = memrun(capsys, "deploy", str(handler), "--secret", "nowhere", "--no-wait")
    assert code == 1 and err.count("\n") == 1
    assert "nowhere" in err and not Deployment.objects.filter(service__name=name).exists()
    code, _, err = memrun(capsys, "secret", "set", "x1", "A=1", VALUE)
    assert (code, err) == (1, "memrun: error: pair 2 is not KEY=VALUE\n")
    code, _, err = memrun(capsys, "secret", "set", "x1", f"MEMRUN_URL={VALUE}")
    assert code == 1 and "MEMRUN_URL is set by memrun" in err and VALUE not in err


def test_env_files_parse_like_dotenv(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text('A=1\n  # note\nexport B="two words"\nC=x=y\n')
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "x=y"}
