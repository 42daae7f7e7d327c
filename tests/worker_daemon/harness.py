"""Helpers for request-path tests: packages, topics, producing, worker subprocesses.

Workers run as real processes (`memrun worker ...`) against the shared Kafka and Redis;
tests wait on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from memrun.packaging import resolve_service
from memrun.wire.manifest import Manifest
from memrun.wire.protocol import (
    PARTITIONER,
    Outcome,
    consumer_group,
    dlq_topic,
    encode_headers,
    new_request_id,
    now_ms,
    outcome_key,
)
from tests.fixtures.services import kafka_test_config
from worker_daemon.logs import parse_line
from worker_daemon.statsfile import stats_read

HANDLERS = Path(__file__).parent / "handlers"
MEMRUN = Path(sys.executable).parent / "memrun"
T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    *,
    timeout_s: float = 30.0,
    what: str | Callable[[], str] = "condition",
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout_s`.
    `what` names it in the failure; a callable is asked then (so it can say how far it got)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s} s waiting for {said}")
        time.sleep(0.02)


def make_package(dest: Path, *, service: str, handler: str = "sync_ops.py") -> Path:
    """A package folder: the handler file as handler.py and a valid manifest.json whose
    config is the handler's own, read the way `memrun deploy` reads it."""
    dest.mkdir(parents=True)
    shutil.copy(HANDLERS / handler, dest / "handler.py")
    digest = hashlib.sha256((dest / "handler.py").read_bytes()).hexdigest()
    manifest = Manifest(
        service=service,
        entry="handler.py",
        config=resolve_service(HANDLERS / handler, {"name": service})[0].config(),
        dependencies=(),
        requires_python=None,
        files={"handler.py": digest},
        memrun_version="0.1.0",
        created_at=datetime.now(UTC).isoformat(),
    )
    (dest / "manifest.json").write_bytes(manifest.to_json())
    return dest


class WorkerProcess:
    """`memrun worker` in a subprocess; its JSON log lines are collected as they come, and
    its stats are read from its stats file (MEMRUN_STATS_PATH, beside the log)."""

    def __init__(
        self, *, service: str, package: Path, worker_id: str, env: dict[str, str], log_path: Path
    ) -> None:
        self.worker_id = worker_id
        self.log_path = log_path
        self.stats_path = log_path.with_suffix(".stats.json")
        env = {**env, "MEMRUN_STATS_PATH": str(self.stats_path)}
        self._log_file = log_path.open("wb")
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                str(MEMRUN),
                "worker",
                "--service",
                service,
                "--package",
                str(package),
                "--worker-id",
                worker_id,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._log_file.write(line)
            self._log_file.flush()
            record = parse_line(line)
            if record is not None:
                with self._lock:
                    self.events.append(record)

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e["event"] == event and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_event(
        self,
        event: str,
        *,
        timeout_s: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            self.check_alive(event)
            return next((e for e in reversed(self.find(event)) if where(e)), None)

        return wait_for(found, timeout_s=timeout_s, what=f"{self.worker_id}: {event}")

    def wait_stats(
        self, *, timeout_s: float = 30.0, where: Callable[[dict[str, Any]], bool] = lambda s: True
    ) -> dict[str, Any]:
        """The worker's newest stats snapshot once `where` holds for it."""

        def found() -> dict[str, Any] | None:
            self.check_alive("stats")
            stats = stats_read(self.stats_path)
            return stats if stats is not None and where(stats) else None

        return wait_for(found, timeout_s=timeout_s, what=f"{self.worker_id}: stats")

    def check_alive(self, waiting_for: str = "") -> None:
        code = self.proc.poll()
        if code is not None and waiting_for not in ("worker.stopped", "exit"):
            self._reader.join(5)
            raise AssertionError(
                f"worker {self.worker_id} exited with {code} while waiting for {waiting_for}; "
                f"log:\n{self.log_path.read_text()[-4000:]}"
            )

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.proc.kill()

    def wait(self, timeout_s: float = 60.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait(10)
        self._reader.join(5)
        self._log_file.close()


def worker_env(
    *, service: str, bootstrap: str, redis_url: str, cache_root: Path, **settings: Any
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MEMRUN_SERVICE=service,
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        REDIS_URL=redis_url,
        MEMRUN_CACHE_ROOT=str(cache_root),
        MEMRUN_STATS_INTERVAL_S="1",
        MEMRUN_SESSION_TIMEOUT_MS="6000",
        MEMRUN_GRACE_PERIOD_S="30",
    )
    env.update({f"MEMRUN_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def make_producer(bootstrap: str) -> Producer:
    return Producer(kafka_test_config(bootstrap, {"partitioner": PARTITIONER, "linger.ms": 2}))


def produce_requests(
    producer: Producer,
    topic: str,
    requests: Iterable[tuple[str, dict[str, Any]]],
    *,
    deadline_ms: int | None = None,
) -> list[str]:
    """Produce (sticky key, payload) pairs the way the API does; returns request ids."""
    ids = []
    for key, payload in requests:
        request_id = new_request_id()
        headers = encode_headers(
            request_id=request_id, deadline_ms=deadline_ms or now_ms() + 600_000
        )
        producer.produce(
            topic, key=key.encode(), value=json.dumps(payload).encode(), headers=headers
        )
        ids.append(request_id)
    assert producer.flush(30) == 0
    return ids


def outcome(client: redis.Redis, service: str, request_id: str) -> Outcome | None:
    raw = client.get(outcome_key(service, request_id))
    return Outcome.from_json(raw) if raw is not None else None


def wait_outcomes(
    client: redis.Redis, service: str, ids: list[str], *, timeout_s: float = 60.0
) -> dict[str, Outcome]:
    found: dict[str, Outcome] = {}

    def all_there() -> bool:
        missing = [i for i in ids if i not in found]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            for request_id, raw in zip(
                chunk, client.mget([outcome_key(service, i) for i in chunk]), strict=True
            ):
                if raw is not None:
                    found[request_id] = Outcome.from_json(raw)
        return len(found) == len(ids)

    wait_for(
        all_there,
        timeout_s=timeout_s,
        what=lambda: f"outcomes of {len(ids)} requests ({len(ids) - len(found)} missing)",
    )
    return found


def group_state(admin: AdminClient, service: str) -> str:
    group = consumer_group(service)
    return str(admin.describe_consumer_groups([group])[group].result(timeout=10).state.name)


def member_worker_id(member: Any) -> str:
    """The worker id of a group member: its group.instance.id (classic protocol, static
    membership) or what its client.id, `memrun-worker-{id}`, names (KIP-848 members are
    dynamic: worker_daemon/consumer.py group_config)."""
    client_id = str(member.client_id or "")
    if member.group_instance_id:
        return str(member.group_instance_id)
    if client_id.startswith("memrun-worker-"):
        return client_id.removeprefix("memrun-worker-")
    return str(member.member_id)


def group_assignment(admin: AdminClient, service: str) -> dict[str, list[int]] | None:
    """worker id -> assigned partitions, when the group is stable; else None."""
    group = consumer_group(service)
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    if description.state.name != "STABLE":
        return None
    return {
        member_worker_id(member): sorted(tp.partition for tp in member.assignment.topic_partitions)
        for member in description.members
    }


def committed_offsets(bootstrap: str, service: str, topic: str, partitions: int) -> dict[int, int]:
    """The service group's committed offsets, read by a consumer of the group that never
    subscribes: the admin client's list_consumer_group_offsets can crash the process when
    the coordinator is not settled (worker_daemon/lag.py says how)."""
    consumer = Consumer(
        kafka_test_config(
            bootstrap,
            {"group.id": consumer_group(service), "enable.auto.commit": False, "log_level": 2},
        )
    )
    try:
        answered = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in answered}


def read_dlq(
    bootstrap: str, service: str, *, count: int, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The first `count` records of the service's DLQ topic."""
    consumer = Consumer(
        kafka_test_config(
            bootstrap,
            {
                "group.id": f"dlq-reader-{new_request_id()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.assign([TopicPartition(dlq_topic(service), 0, 0)])
    records: list[dict[str, Any]] = []
    try:

        def enough() -> bool:
            for message in consumer.consume(100, 0.2):
                if message.error() is None:
                    records.append(json.loads(message.value()))
            return len(records) >= count

        wait_for(enough, timeout_s=timeout_s, what=f"{count} DLQ records")
    finally:
        consumer.close()
    return records
