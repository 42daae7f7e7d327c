"""An async test service (see sync_ops.py): ops run on the pool thread's event loop."""

import asyncio
import os

import redis.asyncio

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=4, timeout_seconds=30)


@svc.handler(sticky_key="user")
async def handle(ctx, request):
    op = request.get("op", "echo")
    ns = request.get("ns", "none")
    if op == "echo":
        await asyncio.sleep(0)
        return {"echo": request, "worker": ctx.worker_id}
    if op == "hang":
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            client = redis.asyncio.Redis.from_url(os.environ["REDIS_URL"])
            await client.rpush(f"{ns}:cancelled", ctx.request_id)
            await client.aclose()
            raise
    if op == "raise":
        raise RuntimeError(request.get("message", "async boom"))
    raise ValueError(f"unknown op {op!r}")
