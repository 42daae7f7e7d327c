"""`manage.py memrun_init`: on first start, the `admin` user (its password printed once)
and a CLI token in MEMRUN_HOME/cli-token. Does nothing when both are in place."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.services.tokens import admin_user_ensure, cli_token_ensure
from memrun.home import CLI_TOKEN_FILE


class Command(BaseCommand):
    help = "Create the admin user and the CLI token on first start."

    def handle(self, *args: Any, **options: Any) -> None:
        user, password = admin_user_ensure(username="admin")
        if password is not None:
            self.stdout.write(
                f"created the admin user: username admin, password {password}\n"
                "  (shown only now; change it at /admin/password_change/)"
            )
        path = settings.MEMRUN_HOME / CLI_TOKEN_FILE
        if cli_token_ensure(user=user, path=path):
            self.stdout.write(f"wrote a CLI token for admin to {path}")
