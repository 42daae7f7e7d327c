"""Import a prepared package's entry module and find the one `MemoryService` it declares."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import site
import sys
import traceback

from memrun import MemoryService
from worker_daemon.package._prepare import PreparedPackage
from worker_daemon.package.errors import ServiceLoadError

_TRACEBACK_TAIL_LINES = 20
_load_count = itertools.count(1)


def _put_on_sys_path(prepared: PreparedPackage) -> None:
    """Package folder first (so its own modules win), then the venv, then the worker's."""
    before = list(sys.path)
    if prepared.site_packages is not None:
        site.addsitedir(str(prepared.site_packages))
    added = [path for path in sys.path if path not in before]
    front = [str(prepared.folder), str(prepared.entry.parent), *added]
    sys.path[:] = list(dict.fromkeys([*front, *before]))
    importlib.invalidate_caches()


def _import_entry(prepared: PreparedPackage) -> dict[str, object]:
    module_name = f"memrun_handler_{(prepared.sha256 or 'dev')[:12]}_{next(_load_count)}"
    spec = importlib.util.spec_from_file_location(module_name, prepared.entry)
    if spec is None or spec.loader is None:
        raise ServiceLoadError(f"{prepared.entry} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[module_name]
        lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
        tail = "\n".join(lines[-_TRACEBACK_TAIL_LINES:])
        raise ServiceLoadError(
            f"importing {prepared.entry.name} failed: {type(exc).__name__}: {exc}\n{tail}",
            details={"traceback_tail": tail},
        ) from None
    return vars(module)


def load_service(prepared: PreparedPackage) -> MemoryService:
    """Import the entry module under a fresh name and return its one MemoryService.

    The service must be a module-level object with a registered @svc.handler();
    ServiceLoadError says what is missing, or carries the import's traceback tail.
    """
    _put_on_sys_path(prepared)
    namespace = _import_entry(prepared)
    found: dict[int, tuple[str, MemoryService]] = {}
    for name, value in namespace.items():
        if isinstance(value, MemoryService):
            found.setdefault(id(value), (name, value))
    entry = prepared.entry.name
    if not found:
        raise ServiceLoadError(
            f"{entry} declares no MemoryService at module level; "
            "add svc = MemoryService('my-service', ...)"
        )
    if len(found) > 1:
        names = ", ".join(sorted(name for name, _ in found.values()))
        raise ServiceLoadError(
            f"{entry} declares several MemoryService objects ({names}); keep one"
        )
    name, service = next(iter(found.values()))
    if service.request_handler is None:
        raise ServiceLoadError(
            f"{entry}: {service.name!r} has no request handler; decorate one function "
            f"with @{name}.handler()"
        )
    return service
