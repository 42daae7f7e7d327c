"""First start: the admin user with a one-time password, and the CLI token file."""

from __future__ import annotations

import stat
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from apps.services.models import ApiToken
from apps.services.tokens import apitoken_authenticate, apitoken_revoke

pytestmark = pytest.mark.django_db


def init(home: Path, settings) -> str:
    settings.MEMRUN_HOME = home
    out = StringIO()
    call_command("memrun_init", stdout=out)
    return out.getvalue()


def test_first_start_creates_admin_and_cli_token(tmp_path: Path, settings) -> None:
    output = init(tmp_path, settings)
    password = output.split("password ", 1)[1].split()[0]
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    token_file = tmp_path / "cli-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert apitoken_authenticate(secret=token_file.read_text().strip()) == admin


def test_later_starts_change_nothing(tmp_path: Path, settings) -> None:
    init(tmp_path, settings)
    secret = (tmp_path / "cli-token").read_text()
    assert init(tmp_path, settings) == ""
    assert (tmp_path / "cli-token").read_text() == secret
    assert ApiToken.objects.count() == 1


def test_a_revoked_or_lost_cli_token_is_replaced(tmp_path: Path, settings) -> None:
    init(tmp_path, settings)
    apitoken_revoke(token=ApiToken.objects.get())
    assert "wrote a CLI token" in init(tmp_path, settings)
    (tmp_path / "cli-token").unlink()
    assert "wrote a CLI token" in init(tmp_path, settings)
    active = ApiToken.objects.filter(revoked_at__isnull=True)
    assert [t.name for t in active] == ["cli"]
    assert apitoken_authenticate(secret=(tmp_path / "cli-token").read_text().strip())
