"""A test service whose async handlers run at once (they meet at a barrier, each on its
pool thread's loop) and print from the handler and from tasks it starts, each naming its
own request."""

import asyncio
import logging
import os
import sys
import threading

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=4, timeout_seconds=30)
together = threading.Barrier(4)  # the concurrency: all of them at once
library = logging.getLogger("some.library")


def meet():
    try:
        together.wait(timeout=5)
    except threading.BrokenBarrierError:
        together.reset()  # fewer at once this time: carry on


async def say(ctx, part):
    await asyncio.to_thread(meet)
    print(f"{ctx.request_id} printed part {part}")


@svc.handler()
async def handle(ctx, request):
    for part in range(2):
        await say(ctx, part)
    await asyncio.gather(asyncio.create_task(say(ctx, 2)))
    print(f"{ctx.request_id} complained", file=sys.stderr)
    library.warning("%s logged", ctx.request_id)
    return {"ok": True}
