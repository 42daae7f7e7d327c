"""A test service that uses ctx.storage, the async S3 client, against the real server."""

import os

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=2, timeout_seconds=30)


@svc.handler(sticky_key="user")
async def handle(ctx, request):
    prefix = request["prefix"]  # s3://bucket/some/prefix/
    await ctx.storage.put(prefix + "a.txt", "alpha")
    await ctx.storage.put(prefix + "b.bin", b"\x00\x01\x02")
    head = await ctx.storage.head(prefix + "a.txt")
    listed = await ctx.storage.list(prefix)
    missing_head = await ctx.storage.head(prefix + "nope")
    try:
        await ctx.storage.get(prefix + "nope")
        missing_get = "found"
    except FileNotFoundError as exc:
        missing_get = str(exc)
    text = (await ctx.storage.get(prefix + "a.txt")).decode()
    await ctx.storage.delete(prefix + "b.bin")
    after = [o.url for o in await ctx.storage.list(prefix)]
    return {
        "text": text,
        "size": head.size_bytes,
        "listed": [(o.url, o.size_bytes) for o in listed],
        "missing_head": missing_head,
        "missing_get": missing_get,
        "after_delete": after,
        "cached": await ctx.get_or_fetch(prefix + "a.txt", decode=lambda p: p.read_text()),
    }
