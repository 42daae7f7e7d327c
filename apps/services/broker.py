"""The control plane's connections for invoke, one set per process, none per request.

- One Kafka producer, polled by one thread; a delivery report is handed to the event
  loop of a coroutine waiting for it, so a produce holds no thread. A caller that waits
  for the outcome does not wait for the report (the outcome proves delivery): its report
  costs a flag on the poll thread, and only a refusal wakes its loop.
- One asyncio Redis pool per event loop (uvicorn runs one loop per process; Django's
  test client makes one per request, hence the per-loop map).
- One Redis subscription per process (apps/services/listener.py) to every service's done
  channel (`memrun:*:done`, where workers publish each first outcome): a waiting caller
  is a future in a dict, not a blocked connection, so a thousand of them cost a thousand
  futures. The same subscription carries cache invalidations (`memrun:invalidate`).
  A caller waits on its request's service and id together: a service's worker may
  publish anything on its own done channel, and it wakes only that service's callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from confluent_kafka import KafkaError, Producer
from django.conf import settings

from apps.common.kafka import control_plane_kafka_config
from apps.services.listener import INVALIDATE_CHANNEL, OutcomeListener
from memrun.wire import protocol

logger = logging.getLogger(__name__)

DELIVERY_TIMEOUT_S = 10.0


class BrokerDown(Exception):
    """Kafka did not take a message; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Settled:
    """A delivery report, settled on the waiting coroutine's own loop."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[KafkaError | None] = loop.create_future()

    def __call__(self, error: KafkaError | None, message: Any) -> None:
        with contextlib.suppress(RuntimeError):  # that loop is closed: its caller has gone
            self.loop.call_soon_threadsafe(_settle, self.future, error)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class _ProducerThread:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._producer: Producer | None = None

    def get(self) -> Producer:
        with self._lock:
            if self._producer is None:
                producer = Producer(
                    control_plane_kafka_config(
                        {
                            "partitioner": protocol.PARTITIONER,
                            "enable.idempotence": True,
                            # No linger: a waiting caller paid it in full (1 ms was
                            # 1.2 ms of one caller's p50), and librdkafka sends one
                            # partition per request, so at a thousand invokes a second
                            # over the service's partitions it batched next to nothing.
                            "linger.ms": 0,
                            "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
                            "socket.nagle.disable": True,
                        }
                    )
                )
                threading.Thread(
                    target=_poll_forever, args=(producer,), name="memrun-producer", daemon=True
                ).start()
                self._producer = producer
            return self._producer


def _poll_forever(producer: Producer) -> None:
    while True:
        producer.poll(1.0)


_producer = _ProducerThread()


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Delivery:
    """The delivery report of a message whose caller waits for its outcome. Set on the
    poll thread: success only marks it (no hop to the loop); a refusal fails `outcome`
    with BrokerDown at once. `confirmed` waits for the report itself, for a caller that
    stops waiting before the outcome came."""

    __slots__ = ("_loop", "_outcome", "_waker", "error", "settled")

    def __init__(self, loop: asyncio.AbstractEventLoop, outcome: asyncio.Future[bytes]) -> None:
        self._loop = loop
        self._outcome = outcome
        self._waker: asyncio.Future[None] | None = None
        self.error: KafkaError | None = None
        self.settled = False

    def __call__(self, error: KafkaError | None, message: Any) -> None:
        self.error = error
        self.settled = True  # after `error`: a reader that sees it settled sees the error
        with contextlib.suppress(RuntimeError):  # that loop is closed: its caller has gone
            if error is not None:
                self._loop.call_soon_threadsafe(_fail, self._outcome, BrokerDown(str(error)))
            if self._waker is not None:
                self._loop.call_soon_threadsafe(_settle, self._waker, None)

    async def confirmed(self) -> None:
        """Return once Kafka has the message; BrokerDown when it refused it, or when no
        report came within the delivery timeout."""
        if not self.settled:
            self._waker = self._loop.create_future()
            if not self.settled:  # else the report came in between: no wake-up is due
                try:
                    await asyncio.wait_for(self._waker, DELIVERY_TIMEOUT_S + 1.0)
                except TimeoutError:
                    raise BrokerDown("no delivery report") from None
        if self.error is not None:
            raise BrokerDown(str(self.error))


def produce_watched(
    messages: list[dict[str, Any]], outcomes: list[asyncio.Future[bytes]]
) -> list[Delivery]:
    """Produce each message (kwargs of `Producer.produce`) for a caller that waits on its
    outcome future (same order); return their Delivery, without waiting for them."""
    producer = _producer.get()
    loop = asyncio.get_running_loop()
    deliveries = []
    for message, outcome in zip(messages, outcomes, strict=True):
        delivery = Delivery(loop, outcome)
        _produce(producer, message, delivery)
        deliveries.append(delivery)
    return deliveries


def _produce(producer: Producer, message: dict[str, Any], report: Callable[..., None]) -> None:
    try:
        producer.produce(**message, on_delivery=report)
    except BufferError:
        raise BrokerDown("the producer queue is full") from None
    except Exception as exc:  # KafkaException: a bad topic or a closed producer
        raise BrokerDown(str(exc)) from None


async def produce_many(messages: list[dict[str, Any]]) -> None:
    """Produce each message (kwargs of `Producer.produce`) and wait for all of their
    delivery reports; BrokerDown when any was refused or none came in time."""
    producer = _producer.get()
    loop = asyncio.get_running_loop()
    reports = []
    for message in messages:
        report = _Settled(loop)
        _produce(producer, message, report)
        reports.append(report.future)
    try:
        errors = await asyncio.wait_for(asyncio.gather(*reports), DELIVERY_TIMEOUT_S + 1.0)
    except TimeoutError:
        raise BrokerDown("no delivery report") from None
    refused = next((error for error in errors if error is not None), None)
    if refused is not None:
        raise BrokerDown(str(refused))


_loop_redis: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def redis_async() -> aioredis.Redis:
    """The asyncio Redis client of the running loop (pooled; short commands only)."""
    loop = asyncio.get_running_loop()
    client = _loop_redis.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            max_connections=64,
            socket_timeout=5,
            socket_connect_timeout=5,
        )
        _loop_redis[loop] = client
    return client


listener = OutcomeListener()


_sync_redis: list[redis.Redis] = []


def publish_invalidate(what: str) -> None:
    """Tell every process's caches that `what` changed (best effort: the caches' TTL is
    the bound when Redis is away)."""
    if not _sync_redis:
        _sync_redis.append(redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2))
    try:
        _sync_redis[0].publish(INVALIDATE_CHANNEL, what)
    except redis.RedisError as exc:
        logger.warning("could not publish an invalidation of %s: %s", what, exc)
