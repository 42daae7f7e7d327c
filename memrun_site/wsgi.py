"""WSGI entry point, for a WSGI server or `manage.py runserver`; `memrun up` serves the
ASGI application (memrun_site/asgi.py), which invoke needs to hold no thread."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memrun_site.settings")

application = get_wsgi_application()
