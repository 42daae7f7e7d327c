"""memrun: serverless warm memory. Declare a `MemoryService`, deploy it, call it."""

from memrun._client import Client, RequestResult
from memrun.context import RequestContext, WorkerContext
from memrun.errors import (
    ApiError,
    ConfigError,
    HandlerError,
    MemrunError,
    RequestTimeout,
    StickyKeyError,
)
from memrun.service import MemoryService
from memrun.wire import ServiceConfig

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
