"""A hostile service for the Redis isolation tests: with the Redis URL its worker was given
(its service's ACL user), it tries what the request names against another service, the
default user and Celery, and answers with what Redis said to each attempt."""

import json
import os
from urllib.parse import urlsplit, urlunsplit

import redis

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], max_workers=1, concurrency=2, timeout_seconds=60)

# The reply script as the worker daemon sends it, pointed at the victim's keys.
FORGE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', 60) then
  redis.call('RPUSH', KEYS[2], '1')
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. ARGV[1])
  return 1
end
return 0
"""


def said(call):
    """What Redis answered: 'ok: ...', or the client's error type and text
    (NoPermissionError for NOPERM, AuthenticationError for NOAUTH and WRONGPASS)."""
    try:
        return f"ok: {call()!r}"
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"


def listen(client, method, channel):
    """Subscribe and read the server's answer (redis-py sends without reading it)."""
    pubsub = client.pubsub()
    try:
        getattr(pubsub, method)(channel)
        return pubsub.get_message(timeout=5)
    finally:
        pubsub.close()


def as_default(password):
    """Connect to the same Redis as its default user, with `password` (None: none)."""
    parts = urlsplit(os.environ["REDIS_URL"])
    host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    userinfo = "" if password is None else f"default:{password}@"
    client = redis.Redis.from_url(urlunsplit(("redis", userinfo + host, "/0", "", "")))
    try:
        return client.set("memrun:owned", "1")
    finally:
        client.close()


def forged(request_id):
    """An outcome shaped like a worker's, saying what B's caller must never see."""
    return json.dumps(
        {
            "request_id": request_id,
            "ok": True,
            "result": {"forged": True},
            "error": None,
            "worker": "evil",
            "attempt": 1,
            "partition": 0,
            "offset": 0,
            "duration_ms": 0,
            "finished_ms": 0,
            "meta": {},
        }
    )


@svc.handler(sticky_key="user")
def handle(ctx, request):
    mine = redis.Redis.from_url(os.environ["REDIS_URL"])
    victim = request.get("victim")
    request_id = request.get("request_id", "")
    attacks = {
        "read_outcome": lambda: mine.get(f"memrun:{victim}:outcome:{request_id}"),
        "exists_outcome": lambda: mine.exists(f"memrun:{victim}:outcome:{request_id}"),
        "forge_set": lambda: mine.set(
            f"memrun:{victim}:outcome:{request_id}", forged(request_id), nx=True
        ),
        "forge_script": lambda: mine.eval(
            FORGE_SCRIPT,
            2,
            f"memrun:{victim}:outcome:{request_id}",
            f"memrun:{victim}:reply:{request_id}",
            forged(request_id),
            f"memrun:{victim}:done",
            request_id,
        ),
        "forge_evalsha": lambda: mine.evalsha(
            mine.script_load(FORGE_SCRIPT),
            2,
            f"memrun:{victim}:outcome:{request_id}",
            f"memrun:{victim}:reply:{request_id}",
            forged(request_id),
            f"memrun:{victim}:done",
            request_id,
        ),
        # Undeclared keys: the script touches the victim's key without naming it.
        "forge_undeclared": lambda: mine.evalsha(
            mine.script_load("return redis.call('SET', ARGV[1], ARGV[2])"),
            0,
            f"memrun:{victim}:outcome:{request_id}",
            forged(request_id),
        ),
        "publish_victim": lambda: mine.publish(f"memrun:{victim}:done", forged(request_id)),
        # Allowed (its own channel), and must wake none of the victim's callers.
        "publish_own": lambda: mine.publish(
            f"memrun:{os.environ['MEMRUN_SERVICE']}:done", f"{request_id} {forged(request_id)}"
        ),
        "subscribe_victim": lambda: listen(mine, "subscribe", f"memrun:{victim}:done"),
        "psubscribe_all": lambda: listen(mine, "psubscribe", "memrun:*:done"),
        # The control plane's cache-invalidation channel: a flood would empty every web
        # process's token and service caches.
        "publish_invalidate": lambda: mine.publish("memrun:invalidate", "token:*"),
        "subscribe_invalidate": lambda: listen(mine, "subscribe", "memrun:invalidate"),
        "celery_push": lambda: mine.lpush("celery", '{"task": "evil"}'),
        "celery_read": lambda: mine.lrange("celery", 0, -1),
        "kombu_bindings": lambda: mine.smembers("_kombu.binding.celery"),
        "select": lambda: mine.execute_command("SELECT", "1"),
        "flushall": lambda: mine.flushall(),
        "flushdb": lambda: mine.flushdb(),
        "config_get": lambda: mine.config_get("requirepass"),
        "keys": lambda: mine.keys("*"),
        "scan": lambda: mine.scan(0),
        "acl_list": lambda: mine.acl_list(),
        "client_list": lambda: mine.client_list(),
        "script_flush": lambda: mine.script_flush(),
        "default_no_password": lambda: as_default(None),
        "default_guessed": lambda: as_default("memrun"),
    }
    try:
        tried = {name: said(attacks[name]) for name in request.get("attacks", [])}
    finally:
        mine.close()
    return {"worker": ctx.worker_id, "tried": tried}
