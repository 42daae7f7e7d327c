"""The memrun control plane's Django project. The Celery app loads with it, so tasks
bind to it in every process that imports Django."""

from memrun_site.celery import app as celery_app

__all__ = ["celery_app"]
