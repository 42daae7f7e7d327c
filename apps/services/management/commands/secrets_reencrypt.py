"""`manage.py secrets_reencrypt`: encrypt every secret again with the newest key of
MEMRUN_SECRETS_KEYS, the middle step of a key rotation (apps/services/secretbox.py)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.services.secretbox import SecretUnreadable
from apps.services.secretstore import secrets_reencrypt


class Command(BaseCommand):
    help = "Re-encrypt every secret with the newest key in MEMRUN_SECRETS_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = secrets_reencrypt()
        except SecretUnreadable as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"re-encrypted {count} secret(s) with the newest key")
