"""The one NinjaAPI of the control plane, at /api/v1/: every app mounts its Router here.

Every operation requires a bearer token or a logged-in session unless it opts out with
`auth=None` (the health check, and a remote worker's wheel and join);
tests/api/test_auth.py walks all routes.
"""

from __future__ import annotations

from ninja import NinjaAPI

from apps.provisioning.api import router as provisioning_router
from apps.services.api import router as services_router
from apps.services.auth import api_auth
from apps.services.secrets_api import router as secrets_router
from apps.workers.api import router as workers_router
from memrun_site.errors import install_error_handlers

api = NinjaAPI(
    title="memrun",
    version="1",
    description="Control plane of memrun: services, their workers, and API tokens.",
    urls_namespace="api-v1",
    auth=api_auth,
    docs_url="/docs",
)
install_error_handlers(api)
api.add_router("/", services_router)
api.add_router("/", secrets_router)
api.add_router("/", workers_router)
api.add_router("/", provisioning_router)
