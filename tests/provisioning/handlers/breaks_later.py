"""A version that works until the test breaks what it depends on (a Redis flag stands
for a feature store that went away): from then on its init handler fails, so each new
worker of it dies at start."""

import os

import redis

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=3, concurrency=4, timeout_seconds=30)
# Under the service's own prefix: its worker's Redis user may read nothing else.
BROKEN_KEY = f"memrun:{os.environ['MEMRUN_SERVICE']}:test-broken"


@svc.init_handler()
def connect(ctx):
    if redis.Redis.from_url(os.environ["REDIS_URL"]).exists(BROKEN_KEY):
        raise ConnectionError("the feature store is gone")


@svc.handler(sticky_key="user")
def handle(ctx, request):
    return {"worker": ctx.worker_id, "user": request["user"], "version": 2}
