"""The request path at the broker level, against Celery, side by side in one run, with ratios.

It produces straight to Kafka and waits on Redis: no HTTP, no control plane, so it is
not what a user pays per invoke. bench/bench_invoke_http.py measures that, beside this.

    eval "$(bash scripts/services env)"; .venv/bin/python bench/bench_request_path.py

1. round trip, one request at a time: produce -> no-op handler -> Redis reply -> the
   waiter wakes (BLPOP) and reads the outcome; against `noop.delay().get()` on a Celery
   worker (Redis broker and result backend). memrun and Celery requests alternate so
   both see the same machine. p50/p99.
2. dispatch rate of one worker (no-op handler, concurrency 16) draining a backlog that
   was queued before it started, against a Celery worker with a 16-thread pool; both
   measured between the first and the last completion timestamp the workers recorded.
3. the cost of the workers' Redis ACL users: round trips (as in 1) to a worker that
   connects as the default user and to one that connects as its service's own ACL user
   (`svc-NAME`, the rules memrun.wire.protocol.worker_redis_acl gives), alternating.
Never run as a test. Targets: p50 <= Celery's and <= 5 ms, p99 <= 25 ms; dispatch
>= 2x Celery and >= 2,000/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memrun.packaging import build_package  # noqa: E402
from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env  # noqa: E402
from memrun.wire.protocol import (  # noqa: E402
    PARTITIONER,
    consumer_group,
    dlq_topic,
    encode_headers,
    new_request_id,
    now_ms,
    outcome_key,
    reply_key,
    request_topic,
    worker_redis_acl,
)

HANDLER = """
import os
from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=16)


@svc.handler()
def noop(ctx, request):
    return None
"""
CELERY_APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.task_default_queue = os.environ["BENCH_QUEUE"]
app.conf.broker_connection_retry_on_startup = True


@app.task
def noop():
    return None
"""
MEMRUN = Path(sys.executable).parent / "memrun"
CELERY = Path(sys.executable).parent / "celery"


def wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.kafka = kafka_connection_from_env()
        self.redis_url = os.environ["REDIS_URL"]
        self.redis = redis.Redis.from_url(self.redis_url)
        self.admin = AdminClient(kafka_client_config(self.kafka))
        self.topics: list[str] = []
        self.users: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.producer = Producer(
            kafka_client_config(self.kafka, {"partitioner": PARTITIONER, "linger.ms": 0})
        )

    def service(self, partitions: int) -> str:
        name = f"bench{uuid.uuid4().hex[:10]}"
        topics = [
            NewTopic(request_topic(name), num_partitions=partitions, replication_factor=1),
            NewTopic(dlq_topic(name), num_partitions=1, replication_factor=1),
        ]
        for topic, future in self.admin.create_topics(topics).items():
            future.result(timeout=30)
            self.topics.append(topic)
        wait_for(
            lambda: all(
                p.leader >= 0
                for p in self.admin.list_topics(request_topic(name), timeout=10)
                .topics[request_topic(name)]
                .partitions.values()
            ),
            timeout_s=30,
            what="topic leaders",
        )
        handler = self.tmp / f"{name}.py"
        handler.write_text(HANDLER)
        build_package(handler, overrides={"name": name}, out=self.tmp / f"{name}.tar.gz")
        return name

    def acl_user_url(self, service: str) -> str:
        """REDIS_URL as `service`'s own ACL user, made as the control plane makes it."""
        user, password = f"svc-{service}", uuid.uuid4().hex
        self.redis.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">{password}", *worker_redis_acl(service)
        )
        self.users.append(user)
        parts = urlsplit(self.redis_url)
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def start_memrun(self, service: str, redis_url: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            REDIS_URL=redis_url or self.redis_url,
            MEMRUN_SERVICE=service,
            MEMRUN_CACHE_ROOT=str(self.tmp / f"cache-{service}"),
            MEMRUN_CONCURRENCY="16",
        )
        log = (self.tmp / f"{service}.log").open("wb")
        proc = subprocess.Popen(
            [
                str(MEMRUN),
                "worker",
                "--service",
                service,
                "--package",
                str(self.tmp / f"{service}.tar.gz"),
                "--worker-id",
                f"{service}-w",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(proc)
        wait_for(
            lambda: (
                b'"worker.assigned"' in (self.tmp / f"{service}.log").read_bytes()
                and self.group_stable(service)
            ),
            timeout_s=60,
            what="the memrun worker to join its group",
        )
        return proc

    def group_stable(self, service: str) -> bool:
        group = consumer_group(service)
        description = self.admin.describe_consumer_groups([group])[group].result(timeout=10)
        return description.state.name == "STABLE" and any(
            m.assignment.topic_partitions for m in description.members
        )

    def start_celery(self, queue: str) -> subprocess.Popen[bytes]:
        """A Celery worker at its quietest (warnings only); readiness is left to the
        callers, which wait for task results anyway."""
        app_dir = self.tmp / "celery_app"
        app_dir.mkdir(exist_ok=True)
        (app_dir / "bench_celery_app.py").write_text(CELERY_APP)
        env = dict(os.environ, BENCH_QUEUE=queue, PYTHONPATH=str(app_dir))
        log = (self.tmp / f"celery-{queue}.log").open("wb")
        proc = subprocess.Popen(
            [
                str(CELERY),
                "-A",
                "bench_celery_app",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "16",
                "-Q",
                queue,
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "warning",
                "-n",
                f"{queue}@bench",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=app_dir,
        )
        self.processes.append(proc)
        return proc

    def produce(self, service: str, count: int) -> list[str]:
        ids = []
        topic = request_topic(service)
        for i in range(count):
            request_id = new_request_id()
            self.producer.produce(
                topic,
                key=f"k{i}".encode(),
                value=b"{}",
                headers=encode_headers(request_id=request_id, deadline_ms=now_ms() + 600_000),
            )
            self.producer.poll(0)
            ids.append(request_id)
        self.producer.flush(60)
        return ids

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for user in self.users:
            self.redis.execute_command("ACL", "DELUSER", user)
        if self.topics:
            for future in self.admin.delete_topics(self.topics).values():
                with suppress(KafkaException):
                    future.result(timeout=30)


@contextmanager
def bench_env() -> Iterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-request-path-"))
    env = Env(tmp)
    try:
        yield env
    finally:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)


def memrun_round_trip(env: Env, service: str) -> float:
    topic = request_topic(service)
    request_id = new_request_id()
    started = time.perf_counter()
    env.producer.produce(
        topic,
        key=request_id.encode(),
        value=b"{}",
        headers=encode_headers(request_id=request_id, deadline_ms=now_ms() + 60_000),
    )
    env.producer.poll(0)
    if env.redis.blpop([reply_key(service, request_id)], timeout=30) is None:
        raise TimeoutError(f"no reply for {request_id}")
    outcome = env.redis.get(outcome_key(service, request_id))
    elapsed = time.perf_counter() - started
    assert outcome is not None and json.loads(outcome)["ok"]
    return elapsed


def celery_round_trip(task: Any) -> float:
    started = time.perf_counter()
    task.delay().get(timeout=30)
    return time.perf_counter() - started


def celery_task(queue: str, redis_url: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=redis_url, backend=redis_url)
    app.conf.task_default_queue = queue

    @app.task(name="bench_celery_app.noop")
    def noop() -> None:
        return None

    return noop


def memrun_dispatch_rate(env: Env, count: int) -> tuple[float, float]:
    """(requests/s, seconds): a backlog of `count` drained by a worker started after."""
    service = env.service(partitions=4)
    ids = env.produce(service, count)
    env.start_memrun(service)
    keys = [outcome_key(service, i) for i in ids]

    def finished() -> list[float] | None:
        stamps: list[float] = []
        for start in range(0, len(keys), 1000):
            for raw in env.redis.mget(keys[start : start + 1000]):
                if raw is None:
                    return None
                stamps.append(json.loads(raw)["finished_ms"] / 1000)
        return stamps

    stamps = wait_for(finished, timeout_s=300, what=f"{count} memrun outcomes")
    span = max(stamps) - min(stamps)
    return (count - 1) / span, span


def celery_dispatch_rate(env: Env, count: int) -> tuple[float, float]:
    queue = f"bench-dispatch-{uuid.uuid4().hex[:10]}"
    task = celery_task(queue, env.redis_url)
    ids = [task.delay().id for _ in range(count)]
    env.start_celery(queue)
    keys = [f"celery-task-meta-{i}" for i in ids]

    def finished() -> list[float] | None:
        stamps: list[float] = []
        for start in range(0, len(keys), 1000):
            for raw in env.redis.mget(keys[start : start + 1000]):
                if raw is None:
                    return None
                done = datetime.fromisoformat(json.loads(raw)["date_done"])
                stamps.append(done.replace(tzinfo=done.tzinfo or UTC).timestamp())
        return stamps

    stamps = wait_for(finished, timeout_s=600, what=f"{count} Celery results")
    env.redis.delete(*keys)
    span = max(stamps) - min(stamps)
    return (count - 1) / span, span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--only-acl", action="store_true", help="run section 3 alone")
    args = parser.parse_args()
    if args.only_acl:
        with bench_env() as env:
            print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
            acl_cost(env, args.round_trips)
        return

    with bench_env() as env:
        print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
        service = env.service(partitions=4)
        env.start_memrun(service)
        queue = f"bench-rt-{uuid.uuid4().hex[:10]}"
        env.start_celery(queue)
        task = celery_task(queue, env.redis_url)
        for _ in range(100):  # warm both paths up
            memrun_round_trip(env, service)
            celery_round_trip(task)
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.round_trips):
            ours.append(memrun_round_trip(env, service))
            theirs.append(celery_round_trip(task))
        ms = 1000
        p50, p99 = percentile(ours, 0.5) * ms, percentile(ours, 0.99) * ms
        c50, c99 = percentile(theirs, 0.5) * ms, percentile(theirs, 0.99) * ms
        print(
            f"\n1. round trip, {args.round_trips} sequential no-op requests each "
            "(produced straight to Kafka: not what a user pays, see bench_invoke_http.py)"
        )
        print(
            f"   memrun : p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"mean {statistics.mean(ours) * ms:6.2f} ms"
        )
        print(
            f"   celery : p50 {c50:6.2f} ms  p99 {c99:6.2f} ms  "
            f"mean {statistics.mean(theirs) * ms:6.2f} ms"
        )
        print(f"   celery/memrun: p50 x{c50 / p50:.2f}  p99 x{c99 / p99:.2f}")
        print(
            f"   targets: p50 <= celery ({'met' if p50 <= c50 else 'MISSED'}), "
            f"p50 <= 5 ms ({'met' if p50 <= 5 else 'MISSED'}), "
            f"p99 <= 25 ms ({'met' if p99 <= 25 else 'MISSED'})"
        )

        ours_rate, ours_span = memrun_dispatch_rate(env, args.backlog)
        theirs_rate, theirs_span = celery_dispatch_rate(env, args.backlog)
        print(f"\n2. dispatch, a backlog of {args.backlog} no-op requests, 16 at a time")
        print(f"   memrun : {ours_rate:8.0f} requests/s  ({ours_span:.2f} s)")
        print(f"   celery : {theirs_rate:8.0f} tasks/s     ({theirs_span:.2f} s, threads pool)")
        print(f"   memrun/celery: x{ours_rate / theirs_rate:.2f}")
        print(
            f"   targets: >= 2x celery ({'met' if ours_rate >= 2 * theirs_rate else 'MISSED'})"
            f", >= 2,000/s ({'met' if ours_rate >= 2000 else 'MISSED'})"
        )
        acl_cost(env, args.round_trips)


def acl_cost(env: Env, round_trips: int) -> None:
    """Section 3: a worker as the default user against one as its service's ACL user."""
    default, scoped = env.service(partitions=4), env.service(partitions=4)
    env.start_memrun(default)
    env.start_memrun(scoped, env.acl_user_url(scoped))
    for _ in range(100):  # warm both paths up
        memrun_round_trip(env, default)
        memrun_round_trip(env, scoped)
    as_default: list[float] = []
    as_scoped: list[float] = []
    for _ in range(round_trips):
        as_default.append(memrun_round_trip(env, default))
        as_scoped.append(memrun_round_trip(env, scoped))
    ms = 1000
    d50, d99 = percentile(as_default, 0.5) * ms, percentile(as_default, 0.99) * ms
    s50, s99 = percentile(as_scoped, 0.5) * ms, percentile(as_scoped, 0.99) * ms
    print(f"\n3. round trip by the worker's Redis user, {round_trips} no-op requests each")
    print(f"   default user      : p50 {d50:6.2f} ms  p99 {d99:6.2f} ms")
    print(f"   service ACL user  : p50 {s50:6.2f} ms  p99 {s99:6.2f} ms")
    print(f"   ACL/default: p50 x{s50 / d50:.2f}  p99 x{s99 / d99:.2f}")


if __name__ == "__main__":
    main()
