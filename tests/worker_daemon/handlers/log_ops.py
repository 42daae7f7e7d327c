"""A test service that writes to every place a worker's log lines come from: stdout,
stderr, and the request's logger (`ctx.log`)."""

import os
import sys

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=2, timeout_seconds=30)


@svc.handler()
def handle(ctx, request):
    print(f"printed by {ctx.request_id}")
    print(f"complained by {ctx.request_id}", file=sys.stderr)
    ctx.log.warning("logged by %s", ctx.request_id)
    return {"ok": True}
