"""An honest service for the Redis isolation tests: each request waits until the test opens
its gate (a key under the service's own prefix), so it is in flight while another service
attacks it, then answers with its true result."""

import os
import time

import redis

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=1, concurrency=8, timeout_seconds=60)
GATE_WAIT_S = 50.0


@svc.handler(sticky_key="user")
def handle(ctx, request):
    if request.get("gated"):
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        gate = f"memrun:{os.environ['MEMRUN_SERVICE']}:gate"
        deadline = time.monotonic() + GATE_WAIT_S
        while not client.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError("the test never opened the gate")
            time.sleep(0.05)
        client.close()
    return {"worker": ctx.worker_id, "true_answer": request["user"] * 7}
