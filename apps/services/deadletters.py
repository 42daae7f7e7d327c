"""Dead letters: the failed and timed-out requests a service's workers put on
`memrun.dlq.{name}` (worker_daemon/outcomes.py writes them), read back, and replayed.

A dead letter is named by where it sits on the DLQ topic, `{partition}-{offset}`: the
name is stable, and finding one is a single seek. Reading never joins a consumer group
and never commits: the DLQ stays as the workers wrote it, and Kafka's retention decides
how long a record is kept. A replay produces the record's payload again with the same
key as a new request (attempt + 1) and records who asked, when, and the new request id
(`DeadLetterReplay`).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import OffsetSpec
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps.common.errors import DomainError
from apps.common.kafka import control_plane_kafka_config
from apps.services import invoke
from apps.services.models import DeadLetterReplay, Service
from apps.services.topics import kafka_admin
from memrun.wire import protocol
from memrun.wire.config import service_config_build

logger = logging.getLogger(__name__)

PAGE_MAX = 200
REPLAY_MAX = 100
_ID = re.compile(r"^(\d{1,6})-(\d{1,19})$")
_CURSOR = re.compile(r"^\d{1,6}:\d{1,19}(,\d{1,6}:\d{1,19})*$")


@dataclass(frozen=True)
class DeadLetter:
    """One failed request as its worker recorded it. `id` is `{partition}-{offset}` on
    the DLQ; `failed_at` when it failed; `attempt` the attempt that failed (1: the
    first delivery; a replay is attempt + 1); `payload` the request body as text."""

    id: str
    partition: int
    offset: int
    request_id: str
    key: str | None
    payload: str
    error_type: str
    error_message: str
    traceback: str
    timed_out: bool
    attempt: int
    worker: str
    failed_at: datetime


@dataclass(frozen=True)
class DeadLetterPage:
    """Up to `limit` dead letters, newest first; `next_cursor` fetches the older ones
    (pass it as `before`), None when there are no more."""

    items: list[DeadLetter]
    next_cursor: str | None


def deadletter_counts(*, services: Iterable[str]) -> dict[str, int | None]:
    """Dead letters kept per service (records on each DLQ topic), by service name; None
    for a service whose DLQ cannot be read now. One metadata call and one offsets round
    trip for all services; Kafka down gives None for each, never an error."""
    names = list(services)
    counts: dict[str, int | None] = dict.fromkeys(names)
    if not names:
        return counts
    timeout_s = settings.MEMRUN_KAFKA_TIMEOUT_S
    try:
        admin = kafka_admin(timeout_s=timeout_s)
        topics = admin.list_topics(timeout=timeout_s).topics
        wanted = {
            TopicPartition(protocol.dlq_topic(name), p): name
            for name in names
            if protocol.dlq_topic(name) in topics
            for p in topics[protocol.dlq_topic(name)].partitions
        }
        if not wanted:
            return {name: None for name in names}
        ends = {}
        for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):  # type: ignore[no-untyped-call]
            futures = admin.list_offsets({tp: spec for tp in wanted}, request_timeout=timeout_s)
            ends[spec] = {
                (tp.topic, tp.partition): f.result(timeout=timeout_s * 2).offset
                for tp, f in futures.items()
            }
    except (KafkaException, TimeoutError) as exc:
        logger.warning("could not count dead letters: %s", exc)
        return counts
    low, high = ends.values()
    for tp, name in wanted.items():
        key = (tp.topic, tp.partition)
        counts[name] = (counts[name] or 0) + max(high[key] - low[key], 0)
    return counts


def deadletter_list(
    *, service: Service, limit: int = 50, before: str | None = None
) -> DeadLetterPage:
    """The service's dead letters, newest first, `limit` (1..PAGE_MAX) per page. `before`
    is a page's `next_cursor`; a malformed one is a 422. Reads at most `limit` records per
    DLQ partition. DomainError 503 when Kafka does not answer."""
    if not 1 <= limit <= PAGE_MAX:
        raise DomainError(
            f"limit must be between 1 and {PAGE_MAX}, got {limit}",
            status=422,
            details={"fields": {"limit": [f"between 1 and {PAGE_MAX}"]}},
        )
    with _reader(service) as reader:
        ends = reader.high if before is None else _parse_cursor(before, reader)
        windows = {p: (max(reader.low[p], end - limit), end) for p, end in ends.items() if end > 0}
        by_partition = reader.read(windows)
    # Merge newest first, taking from each partition only from its end backwards, so the
    # cursor (each partition's lowest offset taken) resumes exactly where this page ends.
    heads = {p: sorted(letters, key=lambda d: d.offset) for p, letters in by_partition.items()}
    items: list[DeadLetter] = []
    while len(items) < limit and any(heads.values()):
        newest = max((h[-1] for h in heads.values() if h), key=lambda d: (d.failed_at, d.offset))
        items.append(heads[newest.partition].pop())
    next_ends = dict(ends)
    for letter in items:
        next_ends[letter.partition] = min(next_ends[letter.partition], letter.offset)
    more = any(next_ends[p] > reader.low[p] for p in next_ends)
    cursor = ",".join(f"{p}:{o}" for p, o in sorted(next_ends.items())) if more else None
    return DeadLetterPage(items=items, next_cursor=cursor)


def deadletter_get(*, service: Service, dead_letter_id: str) -> DeadLetter:
    """One dead letter by its id (`{partition}-{offset}`); DomainError 404 when the DLQ
    has no such record (never written, or past retention), 503 when Kafka is down."""
    match = _ID.match(dead_letter_id)
    if match is None:
        raise _not_found(service, dead_letter_id, "ids look like 0-42 (partition-offset)")
    partition, offset = int(match[1]), int(match[2])
    with _reader(service) as reader:
        if (
            partition not in reader.high
            or not reader.low[partition] <= offset < reader.high[partition]
        ):
            raise _not_found(service, dead_letter_id, "it is not on the DLQ (or expired)")
        letters = reader.read({partition: (offset, offset + 1)}).get(partition, [])
    if not letters:
        raise _not_found(service, dead_letter_id, "it could not be read as a dead letter")
    return letters[0]


def deadletter_replay(
    *, service: Service, dead_letter_ids: list[str], actor: AbstractBaseUser | str
) -> list[DeadLetterReplay]:
    """Produce each dead letter's payload again, with its key, as a new request of
    attempt + 1, and record who replayed it when. All ids are checked first: an unknown
    one is a 404 and nothing is replayed. At most REPLAY_MAX ids, no duplicates
    (`actor` a string is memrun itself)."""
    if not 1 <= len(dead_letter_ids) <= REPLAY_MAX:
        raise DomainError(
            f"give between 1 and {REPLAY_MAX} dead letter ids, got {len(dead_letter_ids)}",
            status=422,
            details={"fields": {"ids": [f"1 to {REPLAY_MAX} ids"]}},
        )
    if len(set(dead_letter_ids)) != len(dead_letter_ids):
        raise DomainError(
            "the same dead letter id is given twice; replay each once",
            status=422,
            details={"fields": {"ids": ["no duplicates"]}},
        )
    letters = [deadletter_get(service=service, dead_letter_id=i) for i in dead_letter_ids]
    who = actor if isinstance(actor, str) else actor.get_username()
    # The deadline is the live settings'; a service never deployed has the defaults'.
    timeout_seconds = (service.config or service_config_build(service.name)).timeout_seconds
    replays = []
    for letter in letters:
        request_id = invoke.request_produce(
            service=service.name,
            key=letter.key,
            body=letter.payload.encode(),
            timeout_seconds=timeout_seconds,
            attempt=letter.attempt + 1,
        )
        with transaction.atomic():
            replays.append(
                DeadLetterReplay.objects.create(
                    service=service,
                    dead_letter_id=letter.id,
                    original_request_id=letter.request_id,
                    request_id=request_id,
                    attempt=letter.attempt + 1,
                    actor=who,
                    at=timezone.now(),
                )
            )
    return replays


def deadletter_replay_list(
    *, service: Service, dead_letter_id: str | None = None
) -> QuerySet[DeadLetterReplay]:
    """The service's replays, newest first; of one dead letter with `dead_letter_id`."""
    replays = DeadLetterReplay.objects.filter(service=service).order_by("-at", "-id")
    return replays if dead_letter_id is None else replays.filter(dead_letter_id=dead_letter_id)


class _Reader:
    """A group-less consumer on one DLQ topic, with its partitions' watermarks."""

    def __init__(self, service: Service) -> None:
        self.topic = protocol.dlq_topic(service.name)
        self.timeout_s = float(settings.MEMRUN_KAFKA_TIMEOUT_S)
        timeout_ms = int(self.timeout_s * 1000)
        self.consumer = Consumer(
            control_plane_kafka_config(
                {
                    # Required by the client; never joined (assign, not subscribe) or
                    # committed.
                    "group.id": "memrun-dlq-reader",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                    "socket.connection.setup.timeout.ms": timeout_ms,
                    "socket.timeout.ms": timeout_ms,
                    # No `logger`: see apps/services/topics.kafka_admin.
                    "log_level": 2,
                }
            )
        )
        self.low: dict[int, int] = {}
        self.high: dict[int, int] = {}

    def open(self) -> None:
        metadata = self.consumer.list_topics(self.topic, timeout=self.timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return  # no DLQ yet: nothing ever failed
        for partition in topic.partitions:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=self.timeout_s
            )
            self.low[partition], self.high[partition] = low, high

    def read(self, windows: dict[int, tuple[int, int]]) -> dict[int, list[DeadLetter]]:
        """The records in [start, end) of each partition in `windows`."""
        wanted = {p: w for p, w in windows.items() if w[0] < w[1]}
        found: dict[int, list[DeadLetter]] = {p: [] for p in wanted}
        if not wanted:
            return found
        self.consumer.assign([TopicPartition(self.topic, p, s) for p, (s, _) in wanted.items()])
        pending = set(wanted)
        deadline = time.monotonic() + self.timeout_s
        while pending and time.monotonic() < deadline:
            for message in self.consumer.consume(500, 0.2):
                partition = message.partition()
                if partition not in pending:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(partition)
                        continue
                    raise KafkaException(error)
                offset = message.offset() or 0
                if offset >= wanted[partition][1]:
                    pending.discard(partition)
                    continue
                letter = _decode(message)
                if letter is not None:
                    found[partition].append(letter)
                if offset + 1 >= wanted[partition][1]:
                    pending.discard(partition)
        if pending:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "reading the DLQ timed out"))
        return found


class _ReaderContext:
    def __init__(self, service: Service) -> None:
        self._reader = _Reader(service)

    def __enter__(self) -> _Reader:
        try:
            self._reader.open()
        except KafkaException as exc:
            self._reader.consumer.close()
            raise _unreachable(exc) from None
        return self._reader

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._reader.consumer.close()
        if isinstance(exc, KafkaException):
            raise _unreachable(exc) from None


def _reader(service: Service) -> _ReaderContext:
    return _ReaderContext(service)


def _decode(message: Message) -> DeadLetter | None:
    """A DLQ record as a DeadLetter; None for a record memrun did not write."""
    try:
        record = json.loads(message.value() or b"")
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    failed_ms = record.get("failed_ms")
    if not isinstance(failed_ms, int):
        failed_ms = message.timestamp()[1]
    attempt = record.get("attempt")
    return DeadLetter(
        id=f"{message.partition()}-{message.offset()}",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        request_id=str(record.get("request_id") or ""),
        key=record["key"] if isinstance(record.get("key"), str) else None,
        payload=str(record.get("payload") or ""),
        error_type=str(error.get("type") or ""),
        error_message=str(error.get("message") or ""),
        traceback=str(error.get("traceback") or ""),
        timed_out=bool(error.get("timed_out")),
        attempt=attempt if isinstance(attempt, int) and attempt >= 1 else 1,
        worker=str(record.get("worker") or ""),
        failed_at=datetime.fromtimestamp(failed_ms / 1000, tz=UTC),
    )


def _parse_cursor(before: str, reader: _Reader) -> dict[int, int]:
    if not _CURSOR.match(before):
        raise DomainError(
            f"before={before!r} is not a cursor: pass a page's next_cursor as it is",
            status=422,
            details={"fields": {"before": ["a next_cursor from an earlier page"]}},
        )
    ends = dict(reader.high)
    for part in before.split(","):
        partition, offset = (int(x) for x in part.split(":"))
        if partition in ends:
            ends[partition] = min(ends[partition], offset)
    return ends


def _not_found(service: Service, dead_letter_id: str, why: str) -> DomainError:
    return DomainError(
        f"{service.name} has no dead letter {dead_letter_id!r}: {why}; list them with "
        f"GET /api/v1/services/{service.name}/dead-letters",
        status=404,
        details={"service": service.name, "id": dead_letter_id},
    )


def _unreachable(exc: KafkaException) -> DomainError:
    error = exc.args[0] if exc.args else None
    reason = error.str() if isinstance(error, KafkaError) else str(exc) or "timed out"
    return DomainError(
        f"Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS} did not answer for the dead letters "
        f"({reason}); start it with `bash scripts/services up` or set KAFKA_BOOTSTRAP_SERVERS",
        status=503,
        details={"kafka": settings.KAFKA_BOOTSTRAP_SERVERS, "reason": reason},
    )
