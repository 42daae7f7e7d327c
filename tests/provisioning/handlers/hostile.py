"""A hostile service for the confinement tests: it tries to open what it is given, and on
request allocates past its declared memory (once: the redelivered request answers)."""

import os
from pathlib import Path

from memrun import MemoryService

svc = MemoryService(
    os.environ["MEMRUN_SERVICE"], memory="256Mi", max_workers=1, concurrency=2, timeout_seconds=60
)


def attempt(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as exc:
        return type(exc).__name__
    return "read"


@svc.handler(sticky_key="user")
def handle(ctx, request):
    if "read" in request:
        return {"opened": {path: attempt(path) for path in request["read"]}, "uid": os.getuid()}
    if "allocate_mib" in request:
        marker = Path(os.environ["HOME"]) / "allocated-once"
        if marker.exists():
            return {"after_restart": True, "worker": ctx.worker_id}
        marker.touch()
        hoard = [b"\x01" * (1 << 20) for _ in range(request["allocate_mib"])]
        return {"allocated_mib": len(hoard)}
    return {"worker": ctx.worker_id}
