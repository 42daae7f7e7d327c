"""Version 2 of picky_v1.py: the bug is fixed."""

import os

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=2, timeout_seconds=30)


@svc.handler(sticky_key="user")
def handle(ctx, request):
    return {"user": request["user"], "version": 2, "attempt": ctx.attempt}
