"""memrun: serverless warm memory. Declare a `MemoryService`, deploy it, call it."""

from memrun._client import Client, RequestResult
from memrun._context import RequestContext, WorkerContext
from memrun._service import MemoryService, ServiceConfig
from memrun.errors import (
    ApiError,
    ConfigError,
    HandlerError,
    MemrunError,
    RequestTimeout,
    StickyKeyError,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "Client",
    "ConfigError",
    "HandlerError",
    "MemoryService",
    "MemrunError",
    "RequestContext",
    "RequestResult",
    "RequestTimeout",
    "ServiceConfig",
    "StickyKeyError",
    "WorkerContext",
    "__version__",
]
