"""`manage.py memrun_token --name NAME [--user admin]`: a new API token, printed last."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from apps.common.errors import DomainError
from apps.services.services import apitoken_create


class Command(BaseCommand):
    help = "Create an API token and print its secret (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="what the token is for, e.g. ci")
        parser.add_argument("--user", default="admin", help="its owner (default: admin)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = get_user_model().objects.filter(username=options["user"]).first()
        except DatabaseError as exc:
            raise CommandError(
                f"the database is not ready ({exc}); start the appliance once with `memrun up`"
            ) from None
        if user is None:
            raise CommandError(f"no user {options['user']!r}; `memrun up` creates admin")
        try:
            token, secret = apitoken_create(user=user, name=options["name"])
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"API token {token.name!r} of {options['user']} (shown only now): {secret}"
        )
