"""What a user pays for an invoke: through HTTP, on `memrun up` as users run it.

    eval "$(bash scripts/services env)"; .venv/bin/python bench/bench_invoke_http.py

Starts `memrun up` (own MEMRUN_HOME; SQLite unless --database-url), deploys a no-op
handler with `memrun deploy`, then, in one run (ratios, because these machines are noisy):

1. one caller: `POST /api/v1/services/{name}/invoke` on a kept-alive connection, against
   the broker round trip (produce straight to Kafka -> worker -> Redis -> the waiter wakes,
   what bench/bench_request_path.py measures), alternating so both see the same machine;
   p50/p99. Target: HTTP p50 within 2 ms of the broker's, HTTP p99 <= 3x its p50.
2. invokes/s with 64 connections from wrk (a C load generator, from apt), against the rate
   of a trivial authenticated endpoint (GET /api/v1/services/{name}) on the same server:
   the framework's floor. Target: >= 1,000 invokes/s on 2 cores.
3. payloads/s through `POST .../invoke-batch` (batches of 500, 4 callers), against the
   worker's own dispatch rate on a backlog produced straight to Kafka. Target: >= 4,000/s
   and >= 0.7x dispatch.
Never run as a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from confluent_kafka import Producer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cpu_table import measured  # noqa: E402
from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env  # noqa: E402
from memrun.wire.protocol import (  # noqa: E402
    PARTITIONER,
    encode_headers,
    new_request_id,
    now_ms,
    outcome_key,
    reply_key,
    request_topic,
)

HANDLER = """
from memrun import MemoryService

svc = MemoryService("{name}", concurrency=64, timeout_seconds=60)


@svc.handler(sticky_key="user")
def noop(ctx, request):
    return None
"""
WRK_INVOKE = """
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer {token}"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, '{{"user": "u' .. (counter % 1000) .. '"}}')
end
"""
WRK_GET = """
wrk.headers["Authorization"] = "Bearer {token}"
"""
MEMRUN = Path(sys.executable).parent / "memrun"


def wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Appliance:
    def __init__(self, home: Path, port: int, database_url: str | None) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY")}
        if database_url:
            env["DATABASE_URL"] = database_url
        self.env = env | {"MEMRUN_HOME": str(home), "MEMRUN_URL": self.url}
        self.log = (home.parent / "up.log").open("w")
        self.process = subprocess.Popen(
            [str(MEMRUN), "up", "--bind", f"127.0.0.1:{port}"],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.healthy, timeout_s=120, what="memrun up")
        self.token = (home / "cli-token").read_text().strip()

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"memrun up exited; see {self.log.name}")
        try:
            return self.request("GET", "/api/v1/health")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            return send(connection, method, path, body, getattr(self, "token", None))
        finally:
            connection.close()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def send(
    connection: http.client.HTTPConnection, method: str, path: str, body: Any, token: str | None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


@contextmanager
def appliance(database_url: str | None) -> Iterator[Appliance]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-invoke-http-"))
    running = Appliance(tmp / "home", free_port(), database_url)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def deploy(up: Appliance, name: str) -> None:
    handler = up.home.parent / "noop.py"
    handler.write_text(HANDLER.format(name=name))
    subprocess.run([str(MEMRUN), "deploy", str(handler), "--name", name], env=up.env, check=True)


class Broker:
    """The broker round trip, as bench_request_path measures it."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.topic = request_topic(service)
        self.producer = Producer(
            kafka_client_config(
                kafka_connection_from_env(),
                {"partitioner": PARTITIONER, "linger.ms": 0, "socket.nagle.disable": True},
            )
        )
        # Past BLPOP's own 30 s: redis-py's default 5 s socket timeout would fail a round
        # trip that the wait allows (a cold worker's first one).
        self.redis = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=60)

    def round_trip(self, key: str) -> tuple[float, float, float]:
        """(seconds, ms to the worker's finish, ms from it back to this caller)"""
        request_id = new_request_id()
        wall = time.time()
        started = time.perf_counter()
        self.produce(request_id, key)
        self.producer.poll(0)
        if self.redis.blpop([reply_key(self.service, request_id)], timeout=30) is None:
            raise TimeoutError(f"no reply for {request_id}")
        outcome = self.redis.get(outcome_key(self.service, request_id))
        elapsed = time.perf_counter() - started
        assert outcome is not None and json.loads(outcome)["ok"]
        return elapsed, *split_ms(wall, elapsed, json.loads(outcome)["finished_ms"])

    def produce(self, request_id: str, key: str) -> None:
        self.producer.produce(
            self.topic,
            key=key.encode(),
            value=json.dumps({"user": key}).encode(),
            headers=encode_headers(request_id=request_id, deadline_ms=now_ms() + 120_000),
        )

    def dispatch_rate(self, count: int) -> float:
        """The worker's rate on a backlog: produced faster than it drains, measured
        between the first and last completion timestamps the worker recorded."""
        ids = [new_request_id() for _ in range(count)]
        for i, request_id in enumerate(ids):
            while True:
                try:
                    self.produce(request_id, f"u{i % 1000}")
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.producer.flush()
        keys = [outcome_key(self.service, i) for i in ids]

        def finished() -> list[float] | None:
            stamps: list[float] = []
            for start in range(0, len(keys), 1000):
                for raw in self.redis.mget(keys[start : start + 1000]):
                    if raw is None:
                        return None
                    stamps.append(json.loads(raw)["finished_ms"] / 1000)
            return stamps

        stamps = wait_for(finished, timeout_s=300, what=f"{count} outcomes")
        return (count - 1) / (max(stamps) - min(stamps))


def split_ms(wall_start: float, elapsed_s: float, finished_ms: int) -> tuple[float, float]:
    """A round trip cut at the worker's finish (its outcome's finished_ms, this machine's
    clock, to the millisecond): (ms before it, ms after it)."""
    before = finished_ms - wall_start * 1000
    return before, elapsed_s * 1000 - before


def one_caller(up: Appliance, broker: Broker, name: str, count: int) -> dict[str, list[float]]:
    """Seconds per call ("http", "broker"), and each cut at the worker's finish ("http in",
    "http out", "broker in", "broker out": ms)."""
    connection = http.client.HTTPConnection("127.0.0.1", up.port, timeout=60)
    path = f"/api/v1/services/{name}/invoke?wait=30"
    samples: dict[str, list[float]] = {k: [] for k in ("http", "broker", "broker in", "broker out")}
    http_calls = []
    for i in range(count):
        key = f"u{i % 1000}"
        wall = time.time()
        started = time.perf_counter()
        status, body = send(connection, "POST", path, {"user": key}, up.token)
        samples["http"].append(time.perf_counter() - started)
        assert status == 200 and body["ok"], (status, body)
        http_calls.append((wall, samples["http"][-1], body["request_id"]))
        trip = broker.round_trip(key)
        for series, value in zip(("broker", "broker in", "broker out"), trip, strict=True):
            samples[series].append(value)
    connection.close()
    # The HTTP answer has no finished_ms: read the outcomes after the timed loop.
    outcomes = broker.redis.mget([outcome_key(name, c[2]) for c in http_calls])
    cuts = [
        split_ms(wall, elapsed, json.loads(raw)["finished_ms"])
        for (wall, elapsed, _), raw in zip(http_calls, outcomes, strict=True)
    ]
    samples["http in"] = [c[0] for c in cuts]
    samples["http out"] = [c[1] for c in cuts]
    return samples


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def web_pids(up: Appliance) -> list[int]:
    """The web server's processes: gunicorn's arbiter and its (uvicorn) workers."""
    for pid in children(up.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gunicorn" in cmdline:
            return [pid, *children(pid)]
    raise RuntimeError("no gunicorn process under memrun up")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used."""
    ticks = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(stat[11]) + int(stat[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(up: Appliance, path: str, script: str, seconds: int) -> tuple[float, float, int]:
    """(requests/s, web server CPU ms per request, requests): the CPU cost does not depend
    on how busy the rest of the machine is, the rate does."""
    lua = up.home.parent / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    lua.write_text(script.format(token=up.token))
    pids = web_pids(up)
    cpu_before = cpu_s(pids)
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", "-s", str(lua), up.url + path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu_used = cpu_s(pids) - cpu_before
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"  (wrk saw {non2xx.group(1)} non-2xx answers on {path})")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, cpu_used * 1000 / total, total


def batch_rate(
    up: Appliance, name: str, seconds: float, size: int, callers: int
) -> tuple[float, int, float]:
    """(payloads/s, payloads, seconds)"""
    done = [0] * callers
    stop_at = time.monotonic() + seconds

    def caller(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", up.port, timeout=120)
        path = f"/api/v1/services/{name}/invoke-batch?wait=60"
        n = 0
        while time.monotonic() < stop_at:
            payloads = [{"user": f"b{index}-{n}-{i}"} for i in range(size)]
            status, body = send(connection, "POST", path, payloads, up.token)
            assert status == 200, (status, body)
            done[index] += size
            n += 1
        connection.close()

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return sum(done) / elapsed, sum(done), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="one-caller samples")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk and batch run")
    parser.add_argument("--dispatch", type=int, default=20_000, help="backlog for dispatch")
    parser.add_argument("--database-url", help="PostgreSQL for the appliance (default SQLite)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: `bash scripts/install` installs it (apt)")
    name = f"bench-http-{uuid.uuid4().hex[:8]}"
    with appliance(args.database_url) as up:
        deploy(up, name)
        broker = Broker(name)
        for i in range(200):  # warm both paths: caches, connections, the worker
            up.request("POST", f"/api/v1/services/{name}/invoke?wait=30", {"user": f"w{i}"})
            broker.round_trip(f"w{i}")
        samples = one_caller(up, broker, name, args.requests)
        http_p50, http_p99 = percentile(samples["http"], 0.5), percentile(samples["http"], 0.99)
        broker_p50 = percentile(samples["broker"], 0.5)
        broker_p99 = percentile(samples["broker"], 0.99)
        ms = 1000
        print(f"one caller, {args.requests} requests each, alternating:")
        print(f"  broker round trip   p50 {broker_p50 * ms:6.2f} ms  p99 {broker_p99 * ms:6.2f} ms")
        print(
            f"  HTTP invoke         p50 {http_p50 * ms:6.2f} ms  p99 {http_p99 * ms:6.2f} ms"
            f"  (mean {statistics.mean(samples['http']) * ms:.2f} ms)"
        )
        print("  cut at the worker's finish (its outcome's finished_ms), p50 ms before | after:")
        for path in ("broker", "http"):
            before = percentile(samples[f"{path} in"], 0.5)
            after = percentile(samples[f"{path} out"], 0.5)
            print(f"    {path:6s}  to its finish {before:6.2f} | back to the caller {after:6.2f}")
        print(
            f"  HTTP - broker p50: {(http_p50 - broker_p50) * ms:+.2f} ms (target <= 2 ms); "
            f"HTTP p99/p50: {http_p99 / http_p50:.2f}x (target <= 3x)"
        )
        where = {
            "up_pid": up.process.pid,
            "redis_port": urlsplit(os.environ["REDIS_URL"]).port,
            # The first bootstrap server's port: the appliance's Kafka on this machine.
            "kafka_port": int(os.environ["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":")[1]),
        }
        with measured(**where) as invoke_phase:
            started = time.monotonic()
            invoke_rate, invoke_cpu, invokes = wrk(
                up, f"/api/v1/services/{name}/invoke?wait=30", WRK_INVOKE, args.seconds
            )
            invoke_s = time.monotonic() - started
        get_rate, get_cpu, _ = wrk(up, f"/api/v1/services/{name}", WRK_GET, args.seconds)
        print(f"64 connections (wrk, 2 threads; load average {os.getloadavg()[0]:.1f}):")
        print(
            f"  invoke              {invoke_rate:8.0f} /s  web CPU {invoke_cpu:.2f} ms each"
            "  (target >= 1,000/s)"
        )
        print(
            f"  GET /services/NAME  {get_rate:8.0f} /s  web CPU {get_cpu:.2f} ms each"
            "  (authenticated, Django's full stack: the floor)"
        )
        print(f"  invoke / GET: {invoke_rate / get_rate:.2f}x the rate")
        print(invoke_phase.table(what="invoke (wrk)", count=invokes, seconds=invoke_s))
        with measured(**where) as batch_phase:
            batch, payloads, batch_s = batch_rate(up, name, args.seconds, size=500, callers=4)
        with measured(**where) as dispatch_phase:
            started = time.monotonic()
            dispatch = broker.dispatch_rate(args.dispatch)
            dispatch_s = time.monotonic() - started
        print("batch vs the worker:")
        print(f"  invoke-batch        {batch:8.0f} payloads/s (500 a batch, 4 callers)")
        print(f"  worker dispatch     {dispatch:8.0f} requests/s (backlog of {args.dispatch})")
        print(f"  batch / dispatch: {batch / dispatch:.2f}x (targets >= 4,000/s and >= 0.7x)")
        print(batch_phase.table(what="payload (invoke-batch)", count=payloads, seconds=batch_s))
        print(
            dispatch_phase.table(
                what="request (backlog produced straight to Kafka)",
                count=args.dispatch,
                seconds=dispatch_s,
            )
        )


if __name__ == "__main__":
    main()
