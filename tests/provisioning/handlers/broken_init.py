"""A version whose init handler raises: its workers never become ready."""

import os

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=3, concurrency=4, timeout_seconds=30)


@svc.init_handler()
def connect(ctx):
    raise ValueError("boom: the database is not there")


@svc.handler(sticky_key="user")
def handle(ctx, request):
    return {"worker": ctx.worker_id, "version": 2}
