"""Handler packages on a worker: verify, extract, install PEP 723 deps, import the service."""

from worker_daemon.package._load import load_service
from worker_daemon.package._prepare import PreparedPackage, prepare
from worker_daemon.package.errors import DependencyError, ServiceLoadError

__all__ = [
    "DependencyError",
    "PreparedPackage",
    "ServiceLoadError",
    "load_service",
    "prepare",
]
