"""A service for the end-to-end tests: answers with who served the request."""

import os

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=3, concurrency=4, timeout_seconds=30)


@svc.init_handler()
def warm(ctx):
    ctx.set_object("served", 0)


@svc.handler(sticky_key="user")
def handle(ctx, request):
    return {"worker": ctx.worker_id, "user": request["user"], "version": 1}
