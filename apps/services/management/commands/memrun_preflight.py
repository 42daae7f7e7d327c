"""`manage.py memrun_preflight`: exit 1, saying what to do, unless the database, Redis
and Kafka all answer. `memrun up` runs it before starting anything."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.services.health import health_check, health_problems


class Command(BaseCommand):
    help = "Check that the database, Redis and Kafka are reachable."

    def handle(self, *args: Any, **options: Any) -> None:
        problems = health_problems(health_check())
        if problems:
            raise CommandError("\n".join(problems))
        self.stdout.write("database, Redis and Kafka are reachable")
