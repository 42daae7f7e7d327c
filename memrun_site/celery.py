"""The Celery app: `celery -A memrun_site worker` and `celery -A memrun_site beat`.
Configured from Django settings (CELERY_*); tasks live in each app's tasks.py."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memrun_site.settings")

app = Celery("memrun")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
