"""Why a package could not be made ready to serve on this worker."""

from __future__ import annotations

from memrun.errors import MemrunError


class DependencyError(MemrunError):
    """A package's PEP 723 dependencies or Python version cannot be met on this worker."""


class ServiceLoadError(MemrunError):
    """The entry module failed to import, or does not declare one service with a handler."""
