from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.generic import RedirectView
from django.views.static import serve

from apps.workers.views import metrics
from memrun_site.api import api

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index"), name="home"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("metrics", metrics, name="metrics"),
]

if settings.MEMRUN_SERVE_STATIC:
    # The appliance serves its own collected static files (the admin's CSS and JS), so
    # `memrun up` needs no web server in front; behind a proxy, MEMRUN_SERVE_STATIC=0.
    urlpatterns += [
        re_path(
            rf"^{settings.STATIC_URL.lstrip('/')}(?P<path>.*)$",
            serve,
            {"document_root": settings.STATIC_ROOT},
        )
    ]
