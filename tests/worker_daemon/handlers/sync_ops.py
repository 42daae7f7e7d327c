"""A sync test service: the payload's "op" says what the handler does.

Runs inside a worker subprocess. Every Redis key it touches starts with the payload's
"ns", which the test makes unique.
"""

import json
import os
import sys
import time

import redis

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=4, timeout_seconds=30)

# Keeps the running count and its high-water mark in one atomic step.
ENTER = """
local n = redis.call('INCR', KEYS[1])
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if n > top then redis.call('SET', KEYS[2], n) end
return n
"""


class Fatal(BaseException):
    """Not an Exception: a handler raising it must not stop the worker either."""


@svc.init_handler()
def connect(ctx):
    # No socket timeout: "block" waits in BLPOP for as long as the test holds the gate.
    ctx.set_object("redis", redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=None))
    ctx.set_object("started_s", time.time())


@svc.handler(sticky_key="user")
def handle(ctx, request):
    r = ctx.get_object("redis")
    op = request.get("op", "echo")
    ns = request.get("ns", "none")
    if op == "echo":
        return {"echo": request, "worker": ctx.worker_id, "key": ctx.key}
    if op == "record":
        run = {
            "id": ctx.request_id,
            "worker": ctx.worker_id,
            "partition": ctx.partition,
            "offset": ctx.offset,
            "key": ctx.key,
        }
        r.rpush(f"{ns}:runs", json.dumps(run))
        if request.get("work_s"):
            time.sleep(request["work_s"])  # simulated work, not synchronisation
        return {"worker": ctx.worker_id}
    if op == "block":
        r.eval(ENTER, 2, f"{ns}:running", f"{ns}:high")
        try:
            r.rpush(f"{ns}:started", ctx.request_id)
            got = r.blpop([f"{ns}:gate"], timeout=request.get("block_s", 60))
        finally:
            r.decr(f"{ns}:running")
        return {"released": got is not None}
    if op == "raise":
        raise ValueError(request.get("message", "boom"))
    if op == "exit":
        sys.exit(request.get("code", 3))
    if op == "fatal":
        raise Fatal("not an Exception")
    if op == "cycle":
        result = {}
        result["self"] = result
        return result
    raise ValueError(f"unknown op {op!r}")
