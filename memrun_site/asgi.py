"""The ASGI application that `memrun up` serves (uvicorn): invoke and request polling
are async and hold no thread while they wait; the rest of the API runs sync in Django's
per-request threads. Calls the fast lane can serve whole (memrun_site/fastlane.py) skip
Django's handler; everything else takes it."""

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "memrun_site.settings")

django_application = get_asgi_application()

from apps.services.broker import listener  # noqa: E402  (needs the apps loaded)
from memrun_site.fastlane import fast_call, serve  # noqa: E402

# Subscribe now, so cache invalidations reach this process before its first invoke.
listener.start(wait=False)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    call = fast_call(scope)
    if call is not None:
        await serve(call, receive, send)
    else:
        await django_application(scope, receive, send)
