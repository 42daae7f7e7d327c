"""The warm handoff on real Kafka: partitions move to a new worker, which prefetches what
their old owner's requests read, from S3 (no cache of the old owner on this "host").

Two in-process Workers in one consumer group with real WarmCaches on s3proxy. The new
owner's hot-set source is the old owner's heartbeat report (worker_daemon/report.py), as
the control plane would hand it over. Prefetches are counted by the cache's counters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Producer

from memrun import MemoryService
from memrun.wire.hotsets import HotEntry, hot_entries_from_wire
from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env
from tests.fixtures.services import S3Settings, make_s3_client
from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import make_producer, produce_requests, wait_for, wait_outcomes
from worker_daemon.cache import CacheSettings, WarmCache
from worker_daemon.handoff import Handoff
from worker_daemon.logs import EventLog
from worker_daemon.report import heartbeat_report
from worker_daemon.runtime import EXIT_OK, Worker
from worker_daemon.settings import WorkerSettings, kafka_fields

MiB = 2**20
PARTITIONS = 4
KEYS = 12


class Lines:
    """An in-memory log stream."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    def write(self, data: bytes) -> int:
        self._buffer += data
        *done, self._buffer = self._buffer.split(b"\n")
        self.events.extend(json.loads(line) for line in done)
        return len(data)

    def flush(self) -> None:
        pass


class Running:
    """A Worker on its own thread, with its cache and log."""

    def __init__(
        self,
        service: ServiceUnderTest,
        svc: MemoryService,
        redis_client: redis.Redis,
        *,
        name: str,
        cache_root: Path,
        s3_settings: S3Settings,
        hot_sets: Callable[[Sequence[int]], Sequence[HotEntry]] | None = None,
    ) -> None:
        settings = WorkerSettings(
            service=svc.name,
            package_path=Path("."),
            **kafka_fields(
                dataclasses.replace(
                    kafka_connection_from_env(), bootstrap_servers=service.bootstrap
                )
            ),
            redis_url=service.redis_url,
            worker_id=f"{svc.name}-{name}",
            stats_interval_s=0.2,
        )
        self.cache = WarmCache.open(
            CacheSettings(
                root=cache_root,
                service=svc.name,
                capacity_bytes=256 * MiB,
                memory_budget_bytes=0,
                download_part_size_bytes=MiB,
            ),
            s3_client=make_s3_client(s3_settings),
        )
        self.lines = Lines()
        log = EventLog(self.lines, worker=settings.worker_id)  # type: ignore[arg-type]
        self.producer = Producer(kafka_client_config(settings.kafka))
        handoff = None
        if hot_sets is not None:
            handoff = Handoff(
                cache=self.cache, source=hot_sets, log=log, max_bytes=64 * MiB, max_s=60
            )
        self.worker = Worker(
            settings=settings,
            service=svc,
            cache=self.cache,
            redis=redis_client,
            producer=self.producer,
            log=log,
            handoff=handoff,
            on_stats=lambda stats: None,
        )
        self.codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.codes.append(self.worker.run()))
        self.thread.start()

    def partitions(self) -> set[int]:
        return {p["partition"] for p in self.worker.stats().get("partitions", [])}

    def stop(self) -> int:
        self.worker.request_stop()
        self.thread.join(60)
        self.producer.flush(5)
        self.cache.close()
        return self.codes[0] if self.codes else -1


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_new_owner_prefetches_the_old_owners_hot_set_and_never_serves_a_changed_object_stale(
    service_factory: Callable[..., ServiceUnderTest],
    redis_client: redis.Redis,
    s3_object: Callable[..., str],
    s3_settings: S3Settings,
    tmp_path: Path,
) -> None:
    service = service_factory(partitions=PARTITIONS)
    svc = MemoryService(service.name, concurrency=2)

    @svc.handler()
    def handle(ctx: Any, request: dict[str, Any]) -> dict[str, Any]:
        path = Path(ctx.get_or_fetch_sync(request["url"]))
        return {"sha": sha(path.read_bytes()), "tier": ctx.tiers[-1], "partition": ctx.partition}

    urls = [s3_object(f"k{i}.bin", f"v1 of k{i} ".encode() * 50_000) for i in range(KEYS)]
    requests = [(f"k{i}", {"url": urls[i]}) for i in range(KEYS)]
    producer = make_producer(service.bootstrap)
    old = Running(
        service,
        svc,
        redis_client,
        name="old",
        cache_root=tmp_path / "old",
        s3_settings=s3_settings,
    )
    new = None
    try:
        wait_for(lambda: old.partitions() == set(range(PARTITIONS)), what="old owns everything")
        ids = produce_requests(producer, service.topic, requests)
        first = wait_outcomes(redis_client, service.name, ids)
        partition_of: dict[str, int] = {}
        for (key, _), request_id in zip(requests, ids, strict=True):
            outcome = first[request_id]
            assert outcome.ok and outcome.result["tier"] == "remote", outcome
            partition_of[key] = outcome.result["partition"]
        hot = old.cache.hot_sets()
        assert {e.url for e in hot} == set(urls)

        # One object of each partition changes after the old owner read it: whichever
        # partitions move, a changed object is among them.
        changed: dict[str, bytes] = {}
        for partition in range(PARTITIONS):
            key = next((k for k, p in partition_of.items() if p == partition), None)
            if key is not None:
                changed[key] = f"v2 of {key} ".encode() * 50_000
                s3_object(f"{key}.bin", changed[key])

        def old_owners_hot_sets(partitions: Sequence[int]) -> list[HotEntry]:
            report = heartbeat_report(old.worker.stats())
            return [
                e for e in hot_entries_from_wire(report["hot_sets"]) if e.partition in partitions
            ]

        revoked = threading.Event()
        old.worker.on_revoked = revoked.set  # a provisioned worker beats at once then
        new = Running(
            service,
            svc,
            redis_client,
            name="new",
            cache_root=tmp_path / "new",
            s3_settings=s3_settings,
            hot_sets=old_owners_hot_sets,
        )
        moved = wait_for(
            lambda: (
                (p := new.partitions()) and p | old.partitions() == set(range(PARTITIONS)) and p
            ),
            timeout_s=60,
            what="partitions moved to the new worker",
        )
        moved_keys = [k for k, p in partition_of.items() if p in moved]
        assert moved_keys and revoked.is_set()
        wait_for(
            lambda: new.cache.stats()["prefetched"] == len(moved_keys),
            what=f"{len(moved_keys)} objects prefetched",
        )
        stats = new.cache.stats()
        assert stats["prefetched_from_peers"] == 0 and stats["adopted"] == 0
        assert stats["fetches"] == len(moved_keys)  # from S3, each once
        assert stats["prefetched_bytes"] == sum(len(f"v1 of {k} ") * 50_000 for k in moved_keys)

        ids = produce_requests(
            producer, service.topic, [(k, {"url": urls[int(k[1:])]}) for k in moved_keys]
        )
        again = wait_outcomes(redis_client, service.name, ids)
        for key, request_id in zip(moved_keys, ids, strict=True):
            outcome = again[request_id]
            assert outcome.ok and outcome.worker == f"{svc.name}-new", outcome
            assert outcome.result["tier"] == "disk", (key, outcome.result)  # prefetched
            expected = changed.get(key, f"v1 of {key} ".encode() * 50_000)
            assert outcome.result["sha"] == sha(expected), f"{key} served stale"
        assert new.cache.stats()["fetches"] == len(moved_keys)  # nothing fetched twice
        assert any(e["event"] == "handoff.prefetched" for e in new.lines.events)
    finally:
        codes = [new.stop()] if new is not None else []
        codes.append(old.stop())
    assert codes == [EXIT_OK] * len(codes)
    # The prefetch thread stopped before the summary: nothing is logged after it.
    assert new is not None and new.lines.events[-1]["event"] == "worker.stopped"


class ConnectOnly:
    """A cache that only records which thread built its S3 client."""

    def __init__(self) -> None:
        self.connected_on: list[str] = []

    def prefetch(self, url: str) -> int:
        return 0

    def connect_s3(self) -> None:
        self.connected_on.append(threading.current_thread().name)


def test_the_s3_client_is_built_before_the_worker_joins_its_group() -> None:
    """Handoff.start runs before the consume loop subscribes: the client must exist when
    it returns, not be built on the prefetch thread while the first requests wait on it."""
    cache = ConnectOnly()
    handoff = Handoff(
        cache=cache,
        source=lambda parts: [],
        log=EventLog(Lines()),  # type: ignore[arg-type]
        max_bytes=MiB,
        max_s=1.0,
    )
    handoff.start()
    try:
        assert cache.connected_on == [threading.current_thread().name]
    finally:
        handoff.stop()
