"""A service for the autoscaling test: each request takes `sleep_s`, so a burst backs up."""

import os
import time

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=2, concurrency=2, timeout_seconds=30)


@svc.handler(sticky_key="user")
def handle(ctx, request):
    time.sleep(request.get("sleep_s", 0))
    return {"worker": ctx.worker_id, "user": request["user"], "double": request["user"] * 2}
