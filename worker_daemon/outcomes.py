"""Where outcomes go: Redis for the caller (stored many per round trip), the DLQ for failures.

The outcome is stored with SET NX, and only a first store pushes the wake-up onto the
reply list: one Lua script call stores a whole batch of outcomes, in one round trip. A
redelivered request whose outcome already exists was answered by the first writer;
`OutcomeStore` also answers "does an outcome exist" for many ids in the same round trip.

The store keeps one connection of its own, taken from the client's pool, and talks on it
directly: a redis-py pipeline costs ~40 us of CPU more per round trip (the pool, its
events and bookkeeping), and a worker with a steady trickle of requests pays one round
trip per request.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Producer
from redis.exceptions import NoScriptError, ResponseError

from memrun.wire.protocol import dlq_topic, done_channel, now_ms, outcome_key, reply_key
from worker_daemon.decode import Request

# KEYS: outcome 1, reply list 1, outcome 2, reply list 2, ...
# ARGV: ttl seconds, done channel, request id 1, outcome json 1, request id 2, ...
# Returns 1 per outcome stored, 0 per outcome that was already there. One call per batch,
# not one per outcome: a call per outcome cost the worker's reply thread about 10 us of
# redis-py per outcome (command packing and reply parsing) and Redis a script run each.
# The script runs with the worker's Redis ACL user, so each call in it is checked against
# that user's key and channel patterns: a worker can only store its own service's outcomes.
REPLY_SCRIPT = """
local ttl, channel, stored = ARGV[1], ARGV[2], {}
for i = 1, #KEYS / 2 do
  local body = ARGV[2 + 2 * i]
  if redis.call('SET', KEYS[2 * i - 1], body, 'NX', 'EX', ttl) then
    redis.call('RPUSH', KEYS[2 * i], '1')
    redis.call('EXPIRE', KEYS[2 * i], ttl)
    redis.call('PUBLISH', channel, ARGV[1 + 2 * i] .. ' ' .. body)
    stored[i] = 1
  else
    stored[i] = 0
  end
end
return stored
"""
TRACEBACK_TAIL_CHARS = 4000


class RedisLike(Protocol):
    """The part of `redis.Redis` the outcome store uses."""

    def script_load(self, script: str) -> Any: ...
    @property
    def connection_pool(self) -> Any: ...


@dataclass(frozen=True)
class Failure:
    """Why a request failed: shown to the caller (type, message) and kept in the DLQ."""

    type: str
    message: str
    traceback: str = ""
    timed_out: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        tail = "".join(traceback.format_exception(exc))[-TRACEBACK_TAIL_CHARS:]
        return cls(type=type(exc).__name__, message=str(exc), traceback=tail)

    @classmethod
    def timeout(cls, timeout_s: float, *, before_start: bool = False) -> Failure:
        message = (
            "the request's deadline passed before it started"
            if before_start
            else f"the handler ran past its deadline ({timeout_s:.3g} s)"
        )
        return cls(type="HandlerTimeout", message=message, timed_out=True)

    def public(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class OutcomeStore:
    """Batched outcome I/O on a connection of its own: one thread at a time (the reply
    stage's)."""

    def __init__(self, redis: RedisLike, *, service: str, reply_ttl_s: int) -> None:
        self._redis = redis
        self._service = service
        self._channel = done_channel(service)
        self._ttl = str(reply_ttl_s)
        self._sha: str | None = None
        self._connection: Any = None

    def exchange(
        self, check_ids: list[str], stores: list[tuple[str, bytes]]
    ) -> tuple[list[bool], list[bool]]:
        """One round trip: which of `check_ids` have an outcome, and, for each
        (request id, outcome json) of `stores`, whether it was stored (False: an outcome
        was already there). Raises the client's errors; the caller retries."""
        try:
            return self._exchange(check_ids, stores)
        except NoScriptError:  # Redis restarted or flushed its scripts
            self._sha = None
            return self._exchange(check_ids, stores)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._redis.connection_pool.release(self._connection)
            self._connection = None

    def _exchange(
        self, check_ids: list[str], stores: list[tuple[str, bytes]]
    ) -> tuple[list[bool], list[bool]]:
        if stores and self._sha is None:
            self._sha = str(self._redis.script_load(REPLY_SCRIPT))
        commands: list[tuple[Any, ...]] = [
            ("EXISTS", outcome_key(self._service, request_id)) for request_id in check_ids
        ]
        if stores:
            keys: list[str] = []
            args: list[str | bytes] = [self._ttl, self._channel]
            for request_id, body in stores:
                keys += (
                    outcome_key(self._service, request_id),
                    reply_key(self._service, request_id),
                )
                args += (request_id, body)
            commands.append(("EVALSHA", self._sha, len(keys), *keys, *args))
        replies = self._round_trip(commands)
        split = len(check_ids)
        stored = [bool(r) for r in replies[split]] if stores else []
        return [bool(r) for r in replies[:split]], stored

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Every command's reply, in order. A command's error is raised after all the
        replies are read, so the connection stays in step; a broken connection is dropped
        and the next round trip opens another (the connection connects on first use)."""
        if self._connection is None:
            self._connection = self._redis.connection_pool.get_connection()
        connection = self._connection
        replies: list[Any] = []
        error: ResponseError | None = None
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:
                    error = error or exc
                    replies.append(None)
        except BaseException:
            connection.disconnect()
            raise
        if error is not None:
            raise error
        return replies


class DeadLetters:
    """Failed requests, with their payload and error, on `memrun.dlq.{service}`."""

    def __init__(self, producer: Producer, *, service: str, worker_id: str) -> None:
        self._producer = producer
        self._topic = dlq_topic(service)
        self._worker_id = worker_id

    def send(self, request: Request, failure: Failure) -> None:
        record = {
            "request_id": request.request_id,
            "key": request.key,
            "payload": request.value.decode("utf-8", "replace"),
            "error": {
                "type": failure.type,
                "message": failure.message,
                "traceback": failure.traceback,
                "timed_out": failure.timed_out,
            },
            "attempt": request.attempt,
            "worker": self._worker_id,
            "topic": request.topic,
            "partition": request.partition,
            "offset": request.offset,
            "failed_ms": now_ms(),
        }
        self._producer.produce(
            self._topic,
            value=json.dumps(record, separators=(",", ":")).encode(),
            key=request.key.encode() if request.key is not None else None,
        )
