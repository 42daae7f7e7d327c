"""Version 1 of a service with a bug: it fails for the user "bad"."""

import os

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=2, timeout_seconds=30)


@svc.handler(sticky_key="user")
def handle(ctx, request):
    if request["user"].startswith("bad"):
        raise ValueError(f"cannot serve {request['user']}")
    return {"user": request["user"], "version": 1, "attempt": ctx.attempt}
