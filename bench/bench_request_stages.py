"""Where the broker round trip's time goes, stage by stage, and the worker's CPU per request.

Like bench/bench_request_path.py it produces straight to Kafka and waits on Redis: no
HTTP, no control plane, so it is NOT what a user pays per invoke (bench/bench_invoke_http.py
measures that). It runs the worker in a child process built as `memrun worker` builds it,
but with its Kafka consumer and Redis client wrapped to note when each request passes
them; the handler notes its own start and end. The timestamps stay in memory (no log
line per request) and the child writes them to a file as it stops; every clock is
CLOCK_REALTIME, so the two processes' stamps compare.

    eval "$(bash scripts/services env)"; .venv/bin/python bench/bench_request_stages.py

1. one caller, sequential no-op requests: per stage p50/p99 of
   produce -> acked (the broker appended it: delivery report)
   produce -> polled (the worker's poll/consume returned it)
   polled -> handler start (hand-over to a pool thread)
   handler start -> end
   handler end -> Redis sent (hand-over to the reply thread, outcome encoded)
   Redis sent -> Redis done (the outcome script's round trip)
   Redis sent -> waiter woke (BLPOP returned)   and   woke -> outcome read (GET)
2. the worker's CPU per request (utime + stime of the child, from /proc) while it drains
   a backlog produced after it joined its group, and its dispatch rate.
3. the same while requests arrive at a steady rate (default 1,000/s, what the HTTP front
   door's target sends it), each produced on its own as a web process would.
Never run as a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_request_path import Env, bench_env, wait_for  # noqa: E402

from memrun.wire.protocol import (  # noqa: E402
    encode_headers,
    new_request_id,
    now_ms,
    outcome_key,
    reply_key,
    request_topic,
)

# The child: `memrun worker`'s construction (worker_daemon.main.run_worker) with the
# Kafka consumer and the Redis client wrapped to stamp each request as it passes.
DRIVER = r"""
import json, os, signal, sys, time
import redis
from confluent_kafka import Consumer, Producer
from memrun.wire.kafka import kafka_client_config
from memrun.wire.protocol import HEADER_REQUEST_ID
from worker_daemon.cache import CacheSettings, WarmCache
from worker_daemon.main import load_package
from worker_daemon.runtime import Worker
from worker_daemon.settings import WorkerSettings
import stamps

def request_id_of(message):
    for name, value in message.headers() or ():
        if name == HEADER_REQUEST_ID:
            return value.decode()
    return None

class StampingConsumer(Consumer):
    def _seen(self, messages):
        now = time.time_ns()
        for message in messages:
            if message is not None and message.error() is None:
                stamps.record("polled", request_id_of(message), now)
        return messages

    def poll(self, *args, **kwargs):
        message = super().poll(*args, **kwargs)
        self._seen([message])
        return message

    def consume(self, *args, **kwargs):
        return self._seen(super().consume(*args, **kwargs))

# The outcome store's own connection: stamps the outcomes of each round trip.
class StampingConnection:
    def __init__(self, inner):
        self._inner, self._ids = inner, []

    def pack_commands(self, commands):
        self._ids = []
        for command in commands:
            if command[0] == "EVALSHA":
                argv = command[3 + command[2]:]
                self._ids += argv[2::2]
        return self._inner.pack_commands(commands)

    def send_packed_command(self, packed):
        sent = time.time_ns()
        for request_id in self._ids:
            stamps.record("redis_sent", request_id, sent)
        return self._inner.send_packed_command(packed)

    def read_response(self):
        response = self._inner.read_response()
        done = time.time_ns()
        for request_id in self._ids:
            stamps.record("redis_done", request_id, done)
        return response

    def __getattr__(self, name):
        return getattr(self._inner, name)

class StampingPool:
    def __init__(self, inner):
        self._inner = inner

    def get_connection(self):
        return StampingConnection(self._inner.get_connection())

    def release(self, connection):
        self._inner.release(connection._inner)

class StampingRedis:
    def __init__(self, inner):
        self._inner = inner
        self.connection_pool = StampingPool(inner.connection_pool)

    def script_load(self, script):
        return self._inner.script_load(script)

settings = WorkerSettings.from_env()
service = load_package(settings)
deployed = service.config()
cache = WarmCache.open(
    CacheSettings.from_env(
        service.name, disk_bytes=deployed.disk_bytes, memory_bytes=deployed.memory_bytes
    )
)
producer = Producer(kafka_client_config(settings.kafka, {"linger.ms": 5, "acks": "all"}))
worker = Worker(
    settings=settings,
    service=service,
    cache=cache,
    redis=StampingRedis(redis.Redis.from_url(settings.redis_url, socket_timeout=10)),
    producer=producer,
    consumer_factory=StampingConsumer,
)
signal.signal(signal.SIGTERM, lambda signum, frame: worker.request_stop())
code = worker.run()
cache.close()
stamps.dump(os.environ["STAMPS_OUT"])
sys.exit(code)
"""
STAMPS = r"""
import json, threading, time

_stamps = {}
_lock = threading.Lock()

def record(stage, request_id, at_ns):
    with _lock:
        _stamps.setdefault(request_id, {})[stage] = at_ns

def dump(path):
    with open(path, "w") as out:
        json.dump(_stamps, out)
"""
HANDLER = """
import os, time
from memrun import MemoryService
import stamps

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=16)


@svc.handler()
def noop(ctx, request):
    stamps.record("started", ctx.request_id, time.time_ns())
    stamps.record("ended", ctx.request_id, time.time_ns())
    return None
"""
# (label, from stage, to stage)
SPANS = [
    ("produce -> acked by the broker", "produced", "acked"),
    ("produce -> polled by the worker", "produced", "polled"),
    ("polled -> handler start", "polled", "started"),
    ("handler start -> end", "started", "ended"),
    ("handler end -> Redis sent", "ended", "redis_sent"),
    ("Redis sent -> Redis done", "redis_sent", "redis_done"),
    ("Redis sent -> waiter woke", "redis_sent", "woke"),
    ("waiter woke -> outcome read", "woke", "read"),
    ("whole round trip", "produced", "read"),
]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class StagedWorker:
    """The stamping worker in a child process, serving `service`."""

    def __init__(self, env: Env, service: str) -> None:
        self.out = env.tmp / f"stamps-{service}.json"
        (env.tmp / "stamps.py").write_text(STAMPS)
        driver = env.tmp / "driver.py"
        driver.write_text(DRIVER)
        package = env.tmp / f"{service}.tar.gz"
        self.log_path = env.tmp / f"{service}-staged.log"
        child_env = dict(
            os.environ,
            MEMRUN_SERVICE=service,
            MEMRUN_PACKAGE_PATH=str(package),
            MEMRUN_WORK_ROOT=str(env.tmp / "work"),
            MEMRUN_CACHE_ROOT=str(env.tmp / f"cache-{service}"),
            MEMRUN_WORKER_ID=f"{service}-staged",
            MEMRUN_CONCURRENCY="16",
            PYTHONPATH=os.pathsep.join([str(env.tmp), str(BENCH.parent)]),
            STAMPS_OUT=str(self.out),
        )
        self.process = subprocess.Popen(
            [sys.executable, str(driver)],
            env=child_env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        env.processes.append(self.process)
        wait_for(
            lambda: (
                b'"worker.assigned"' in self.log_path.read_bytes() and env.group_stable(service)
            ),
            timeout_s=60,
            what="the stamping worker to join its group",
        )

    def cpu_s(self) -> float:
        stat = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, dict[str, int]]:
        self.process.terminate()
        self.process.wait(60)
        stamps: dict[str, dict[str, int]] = json.loads(self.out.read_text())
        return stamps


class Caller:
    """Produces one request at a time and waits for it, noting each step's time."""

    def __init__(self, env: Env, service: str) -> None:
        self.env = env
        self.service = service
        self.topic = request_topic(service)
        self.waiter = redis.Redis.from_url(env.redis_url)
        self.stamps: dict[str, dict[str, int]] = {}
        self._stop = threading.Event()
        # Delivery reports are served on their own thread, so the ack is stamped when it
        # arrives, not when the caller next polls.
        self._reports = threading.Thread(target=self._serve_reports, daemon=True)
        self._reports.start()

    def _serve_reports(self) -> None:
        while not self._stop.is_set():
            self.env.producer.poll(0.05)

    def call(self) -> None:
        request_id = new_request_id()
        mine = self.stamps[request_id] = {}

        def acked(error: Any, message: Any) -> None:
            mine["acked"] = time.time_ns()

        mine["produced"] = time.time_ns()
        self.env.producer.produce(
            self.topic,
            key=request_id.encode(),
            value=b"{}",
            headers=encode_headers(request_id=request_id, deadline_ms=now_ms() + 60_000),
            on_delivery=acked,
        )
        if self.waiter.blpop([reply_key(self.service, request_id)], timeout=30) is None:
            raise TimeoutError(f"no reply for {request_id}")
        mine["woke"] = time.time_ns()
        outcome = self.waiter.get(outcome_key(self.service, request_id))
        mine["read"] = time.time_ns()
        assert outcome is not None and json.loads(outcome)["ok"]

    def close(self) -> None:
        self._stop.set()
        self._reports.join()


def stage_table(caller: dict[str, dict[str, int]], worker: dict[str, dict[str, int]]) -> None:
    merged = {rid: {**stamps, **worker.get(rid, {})} for rid, stamps in caller.items()}
    for label, start, end in SPANS:
        spans = [(s[end] - s[start]) / 1e6 for s in merged.values() if start in s and end in s]
        if not spans:
            print(f"   {label:34s}  (no samples)")
            continue
        print(
            f"   {label:34s}  p50 {percentile(spans, 0.5):7.3f} ms  "
            f"p99 {percentile(spans, 0.99):7.3f} ms  mean {statistics.mean(spans):7.3f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=1000, help="steady requests/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="of the steady rate")
    args = parser.parse_args()
    with bench_env() as env:
        print(f"machine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
        service = env.service(partitions=4)
        (env.tmp / f"{service}.py").write_text(HANDLER)
        from memrun.packaging import build_package

        build_package(
            env.tmp / f"{service}.py",
            overrides={"name": service},
            out=env.tmp / f"{service}.tar.gz",
        )
        worker = StagedWorker(env, service)
        caller = Caller(env, service)
        for _ in range(100):  # warm up; these samples are dropped
            caller.call()
        caller.stamps.clear()
        for _ in range(args.round_trips):
            caller.call()
        caller.close()

        cpu_before = worker.cpu_s()
        ids = env.produce(service, args.backlog)
        keys = [outcome_key(service, i) for i in ids]

        def finished() -> list[float] | None:
            stamps: list[float] = []
            for start in range(0, len(keys), 1000):
                for raw in env.redis.mget(keys[start : start + 1000]):
                    if raw is None:
                        return None
                    stamps.append(json.loads(raw)["finished_ms"] / 1000)
            return stamps

        done = wait_for(finished, timeout_s=300, what=f"{args.backlog} outcomes")
        cpu_used = worker.cpu_s() - cpu_before
        steady, steady_cpu = steady_rate(env, service, worker, args.rate, args.seconds)
        worker_stamps = worker.stop()
        print(f"\n1. one caller, {args.round_trips} sequential no-op requests, by stage")
        stage_table(caller.stamps, worker_stamps)
        span = max(done) - min(done)
        print(f"\n2. a backlog of {args.backlog} no-op requests (concurrency 16)")
        print(f"   dispatch          {(args.backlog - 1) / span:8.0f} requests/s")
        print(f"   worker CPU        {cpu_used * 1e6 / args.backlog:8.0f} us per request")
        print(f"\n3. {steady} no-op requests at a steady {args.rate}/s")
        print(f"   worker CPU        {steady_cpu * 1e6 / steady:8.0f} us per request")
        print(f"   load average {os.getloadavg()[0]:.1f}")


def steady_rate(
    env: Env, service: str, worker: StagedWorker, rate: int, seconds: float
) -> tuple[int, float]:
    """(requests, worker CPU seconds) for `rate` requests/s over `seconds`, paced."""
    topic = request_topic(service)
    count = int(rate * seconds)
    ids = [new_request_id() for _ in range(count)]
    cpu_before = worker.cpu_s()
    started = time.monotonic()
    for i, request_id in enumerate(ids):
        while (ahead := started + i / rate - time.monotonic()) > 0:
            time.sleep(min(ahead, 0.001))
        env.producer.produce(
            topic,
            key=f"k{i}".encode(),
            value=b"{}",
            headers=encode_headers(request_id=request_id, deadline_ms=now_ms() + 60_000),
        )
        env.producer.poll(0)
    env.producer.flush(30)
    keys = [outcome_key(service, i) for i in ids]
    wait_for(
        lambda: sum(env.redis.exists(*keys[s : s + 1000]) for s in range(0, count, 1000)) == count,
        timeout_s=120,
        what=f"{count} steady outcomes",
    )
    return count, worker.cpu_s() - cpu_before


if __name__ == "__main__":
    main()
