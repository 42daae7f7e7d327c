"""A test service whose sync handlers run at once (they meet at a barrier) and print,
write to stderr and log through a library's logger, each naming its own request."""

import logging
import os
import sys
import threading

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=4, timeout_seconds=30)
together = threading.Barrier(4)  # the concurrency: all of them at once
library = logging.getLogger("some.library")


@svc.handler()
def handle(ctx, request):
    for part in range(3):
        try:
            together.wait(timeout=5)
        except threading.BrokenBarrierError:
            together.reset()  # fewer at once this time: carry on
        print(f"{ctx.request_id} printed part {part}")
    print(f"{ctx.request_id} complained", file=sys.stderr)
    library.warning("%s logged", ctx.request_id)
    return {"ok": True}
