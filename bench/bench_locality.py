"""Locality through routing and through change, measured on the appliance.

Starts its own appliance (`memrun up` on a free port, a fresh MEMRUN_HOME), puts OBJECTS
objects of SIZE into S3, deploys with the CLI (`memrun deploy`, `memrun scale`) and sends
Zipf-distributed requests through the HTTP API, as a user would. S3 traffic is counted from
what the workers report in their heartbeats (each worker's cache counters: real fetches
and the bytes they brought), never from request tags.

- P6 sticky vs key-less routing, 4 workers each: S3 fetches and bytes, p50/p99 of the
  requests. Ideal: each distinct object fetched once.
- P7 scale 4 -> 5 under load (sticky): partitions moved, S3 fetches, p99 of the first
  request to each moved key against the warm p99, bytes copied from another worker's cache
  on this host (the old owner's: worker_daemon/cache/handover.py) against the moved keys'
  bytes. Ideal: no S3 fetch, first requests as fast as warm ones.
- P9 a rolling deploy v1 -> v2 under load (sticky): S3 fetches during and after the
  deploy against the working set. Target: at most 10% of the working set.

    eval "$(bash scripts/services env)"
    .venv/bin/python bench/bench_locality.py [--objects 40] [--size-mib 4] [--requests 400]
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from memrun import Client  # noqa: E402

MiB = 2**20
# Workers get S3 credentials only from their service's secrets (never the appliance's).
S3_SECRET = "bench-locality-s3"
HANDLER = '''\
"""memrun locality bench: read one object through the warm cache. {marker}"""
import time
from pathlib import Path

from memrun import MemoryService

svc = MemoryService(
    name="{name}", memory="512Mi", disk="{disk}", min_workers={min_workers}, max_workers=5,
    concurrency=4, timeout_seconds=120, secrets=["{secret}"],
)


@svc.handler({sticky})
def handle(ctx, req):
    started = time.time()
    path = Path(ctx.get_or_fetch_sync(req["url"]))
    return {{
        "size": path.stat().st_size, "worker": ctx.worker_id, "tier": ctx.tiers[-1],
        "partition": ctx.partition, "started": started,
        "fetch_ms": (time.time() - started) * 1000,
    }}
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_ms(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


@dataclass
class Answer:
    key: int
    worker: str
    seconds: float
    started: float
    handler_ms: float
    sent_wall: float = 0.0  # epoch seconds, comparable with the workers' log times
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Traffic:
    """Zipf requests from a few client threads until stopped; every answer is kept."""

    client: Client
    service: str
    urls: list[str]
    clients: int
    rng: random.Random
    answers: list[Answer] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def weights(self) -> list[float]:
        return [1 / (rank + 1) ** 1.1 for rank in range(len(self.urls))]

    def run(self, count: int | None = None) -> None:
        """Send `count` requests (or until `stop`) from `clients` threads."""
        keys = self.rng.choices(range(len(self.urls)), self.weights(), k=count or 10**7)
        feed = iter(keys)
        feed_lock = threading.Lock()

        def one_client() -> None:
            while not self._stop.is_set():
                with feed_lock:
                    key = next(feed, None)
                if key is None:
                    return
                payload = {"obj": key, "url": self.urls[key]}
                sent_wall = time.time()
                started = time.monotonic()
                try:
                    result = self.client.invoke_request(self.service, payload, wait=120)
                except Exception as exc:  # a bench reports failures, it does not stop on one
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                if not result.ok:
                    with self._lock:
                        self.errors.append(repr(result.error))
                    continue
                answer = Answer(
                    key,
                    str(result.worker),
                    time.monotonic() - started,
                    started,
                    float(result.duration_ms or 0.0),
                    sent_wall,
                    result.result if isinstance(result.result, dict) else {},
                )
                with self._lock:
                    self.answers.append(answer)

        threads = [threading.Thread(target=one_client) for _ in range(self.clients)]
        for thread in threads:
            thread.start()
        self._threads = threads

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.started >= t]


class Appliance:
    def __init__(self, work: Path) -> None:
        self.home = work / "home"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "MEMRUN_HOME": str(self.home)}
        self.env.pop("DATABASE_URL", None)  # the embedded default: SQLite under MEMRUN_HOME
        self.log = work / "memrun-up.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "memrun.cli", "up", "--bind", f"127.0.0.1:{port}"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        wait_for("memrun up to be healthy", self._healthy, 180)
        self.token = (self.home / "cli-token").read_text().strip()
        self.env |= {"MEMRUN_URL": self.url, "MEMRUN_TOKEN": self.token}
        self.client = Client(self.url, self.token, timeout_s=60)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            sys.exit(f"memrun up exited; its log:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2):
                return True
        except OSError:
            return False

    def cli(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "memrun.cli", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"memrun {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")

    def workers(self, service: str, *, all: bool = False) -> list[dict[str, Any]]:
        return self.client.service_workers(service, include_finished=all)

    def ready(self, service: str, count: int, version: int | None = None) -> bool:
        ready = [
            w
            for w in self.workers(service)
            if w["state"] == "ready" and (version is None or w["deployment_version"] == version)
        ]
        owned = sorted(p for w in ready for p in w["partitions"])
        return len(ready) == count and len(self.workers(service)) == count and bool(owned)

    def s3_counters(self, service: str, *, after: float) -> tuple[int, int, int]:
        """(fetches, fetched bytes, bytes copied from other workers' caches) summed over
        every worker that ever ran, once each live worker has sent a heartbeat newer than
        `after` (wall clock)."""
        counters = self.cache_counters(service, after=after)
        return counters["fetches"], counters["fetched_bytes"], counters["adopted_bytes"]

    def cache_counters(self, service: str, *, after: float) -> collections.Counter[str]:
        """The workers' cache counters (S3 fetches and bytes, bytes copied from other
        caches, prefetched objects and bytes) summed over every worker that ever ran,
        once each live worker has sent a heartbeat newer than `after` (wall clock)."""

        def fresh() -> list[dict[str, Any]] | None:
            workers = self.workers(service, all=True)
            for worker in workers:
                if worker["state"] in ("stopped", "dead"):
                    continue
                beat = worker.get("last_heartbeat_at")
                if beat is None or datetime.fromisoformat(beat).timestamp() < after:
                    return None
            return workers

        workers = wait_for("fresh heartbeats", fresh, 60)
        counters: collections.Counter[str] = collections.Counter()
        for worker in workers:
            cache = worker["stats"].get("cache") or {}
            remote = cache.get("remote") or {}
            handover = cache.get("handover") or {}
            counters["fetches"] += int(remote.get("fetches", remote.get("hits", 0)))
            counters["fetched_bytes"] += int(remote.get("fetched_bytes", remote.get("bytes", 0)))
            for name in ("adopted_bytes", "prefetched", "prefetched_bytes"):
                counters[name] += int(handover.get(name, 0))
            counters["prefetched_from_peers"] += int(handover.get("prefetched_from_peers", 0))
        return counters

    def log_events(self, service: str, names: set[str], *, since: float) -> list[dict[str, Any]]:
        """The service's log lines named `names` since `since` (epoch seconds), oldest
        first, each with `ts` as epoch seconds."""
        found, cursor = [], str(since)
        while True:
            page = self.client.logs(service, since=cursor, limit=1000)
            for line in page["lines"]:
                if line["event"] in names:
                    line["ts"] = datetime.fromisoformat(line["ts"]).timestamp()
                    found.append(line)
            if not page["more"] or not page["lines"]:
                return found
            cursor = page["next_since"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()


def write_handler(folder: Path, name: str, *, sticky: bool, marker: str, disk: str) -> Path:
    path = folder / f"{name}-{marker}.py"
    path.write_text(
        HANDLER.format(
            name=name,
            marker=marker,
            disk=disk,
            sticky='sticky_key="obj"' if sticky else "",
            min_workers=4 if sticky else 0,
            secret=S3_SECRET,
        )
    )
    return path


def owners(appliance: Appliance, service: str) -> dict[int, str]:
    return {p: w["name"] for w in appliance.workers(service) for p in w["partitions"]}


def line(label: str, value: str, ideal: str) -> None:
    print(f"  {label:<44} {value:<22} ideal {ideal}")


def rebalance_breakdown(
    appliance: Appliance, service: str, firsts: dict[int, Answer], *, since: float
) -> None:
    """Where the first request to each moved key spent its time, from the workers' own
    log events (assigned, revoked: epoch seconds on this host) and what the handler
    reports (its start, the cache read): waiting for its partition to move (sent before
    the new owner was assigned it), in the new owner's queue after that, the cache read,
    the rest of the handler, and the way back (outcome stored, read by the API)."""
    names = {"worker.assigned", "worker.revoked", "worker.consuming", "handoff.prefetched"}
    events = appliance.log_events(service, names, since=since - 1)
    assigned: dict[tuple[str, int], float] = {}
    revoked: dict[int, float] = {}
    for event in events:
        for partition in event["fields"].get("partitions") or []:
            if event["event"] == "worker.assigned":
                assigned.setdefault((event["worker"], partition), event["ts"])
            elif event["event"] == "worker.revoked":
                revoked.setdefault(partition, event["ts"])
    subscribed = [e["ts"] for e in events if e["event"] == "worker.consuming"]
    gaps = [assigned[(w, p)] - revoked[p] for (w, p) in assigned if p in revoked]
    if subscribed and revoked:
        print(
            f"  rebalance: new worker subscribed -> first revoke "
            f"{min(revoked.values()) - subscribed[0]:.2f} s, "
            f"revoke -> assign on the new owner p50 {percentile(gaps, 0.5):.2f} s max "
            f"{max(gaps, default=float('nan')):.2f} s"
        )
    for event in events:
        if event["event"] == "handoff.prefetched":
            fields = event["fields"]
            print(
                f"  handoff on {event['worker']}: {fields.get('objects')} objects, "
                f"{fields.get('bytes', 0) / MiB:.0f} MiB in {fields.get('seconds')} s "
                f"(partitions {fields.get('partitions')})"
            )
    parts: dict[str, list[float]] = collections.defaultdict(list)
    for answer in firsts.values():
        result = answer.result
        partition, started = result.get("partition"), result.get("started")
        if partition is None or started is None:
            continue
        t_assign = assigned.get((answer.worker, int(partition)), answer.sent_wall)
        handler_s = answer.handler_ms / 1000
        fetch_s = float(result.get("fetch_ms", 0.0)) / 1000
        parts["end to end"].append(answer.seconds)
        parts["waiting for the partition to move"].append(max(0.0, t_assign - answer.sent_wall))
        parts["queued at the new owner"].append(started - max(answer.sent_wall, t_assign))
        parts["cache read (HEAD + copy/fetch)"].append(fetch_s)
        parts["rest of the handler"].append(max(0.0, handler_s - fetch_s))
        parts["outcome back to the caller"].append(
            answer.sent_wall + answer.seconds - (started + handler_s)
        )
        parts[f"tier {result.get('tier')}"].append(fetch_s)
    print(f"  first requests to moved keys, where the time went ({len(firsts)} keys; ms):")
    for label, values in parts.items():
        print(
            f"    {label:<40} p50 {percentile(values, 0.5) * 1e3:8.1f}  max "
            f"{max(values) * 1e3:8.1f}  (n={len(values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=40)
    parser.add_argument("--size-mib", type=float, default=4)
    parser.add_argument("--requests", type=int, default=400, help="per P6 service")
    parser.add_argument("--clients", type=int, default=4, help="concurrent callers")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="memrun-bench-locality-"))
    rng = random.Random(args.seed)
    size = int(args.size_mib * MiB)
    disk = f"{max(64, 4 * args.objects * size // MiB)}Mi"
    bucket = os.environ.get("MEMRUN_S3_BUCKET", "memrun")
    prefix = f"bench-locality/{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ.get("MEMRUN_S3_ENDPOINT_URL"),
        config=Config(s3={"addressing_style": "path"}),
    )
    urls = []
    for index in range(args.objects):
        key = f"{prefix}/obj-{index:04d}.bin"
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
        urls.append(f"s3://{bucket}/{key}")
    working_set = args.objects * size
    bucket_keys = [url.removeprefix(f"s3://{bucket}/") for url in urls]
    head_ms = [timed_ms(lambda k=k: s3.head_object(Bucket=bucket, Key=k)) for k in bucket_keys]
    get_ms = [
        timed_ms(lambda k=k: s3.get_object(Bucket=bucket, Key=k)["Body"].read())
        for k in bucket_keys[:5]
    ]
    print(
        f"{args.objects} objects of {size / MiB:g} MiB ({working_set / MiB:g} MiB), Zipf s=1.1, "
        f"{args.clients} concurrent callers; workdir {work}"
    )

    eager_ms = percentile(head_ms, 0.5) * args.objects
    print(
        f"S3 HEAD p50 {percentile(head_ms, 0.5):.1f} ms, GET of one object p50 "
        f"{percentile(get_ms, 0.5):.1f} ms: an adopted entry is revalidated on first use "
        f"(one HEAD per object asked for, which a miss makes anyway), not on adoption (one "
        f"HEAD per object held: {args.objects} here, {eager_ms:.0f} ms)"
    )
    appliance = Appliance(work)
    try:
        appliance.client.secret_set(
            S3_SECRET,
            {
                name: os.environ[name]
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
                if os.environ.get(name)
            }
            | {"AWS_ENDPOINT_URL_S3": os.environ.get("MEMRUN_S3_ENDPOINT_URL", "")},
        )
        sticky, keyless = f"loc-{uuid.uuid4().hex[:5]}", f"any-{uuid.uuid4().hex[:5]}"
        results: dict[str, tuple[int, int, list[float], int]] = {}
        warm_p99 = warm_handler_p99 = float("nan")
        owner_before: dict[int, str] = {}
        for name, is_sticky in ((sticky, True), (keyless, False)):
            handler = write_handler(work, name, sticky=is_sticky, marker="v1", disk=disk)
            appliance.cli("deploy", str(handler), "--name", name, "-m", "bench v1")
            if not is_sticky:
                appliance.cli("scale", name, "4")
            wait_for(f"{name}: 4 ready workers", lambda n=name: appliance.ready(n, 4), 300)
            traffic = Traffic(appliance.client, name, urls, args.clients, rng)
            traffic.run(args.requests)
            traffic.join()
            fetches, fetched, _ = appliance.s3_counters(name, after=time.time())
            seconds = [a.seconds for a in traffic.answers]
            distinct = len({a.key for a in traffic.answers})
            results[name] = (fetches, fetched, seconds, distinct)
            if traffic.errors:
                print(f"  {name}: {len(traffic.errors)} failed requests, e.g. {traffic.errors[0]}")
            if is_sticky:
                # The warm p99: the same traffic again, every object already cached.
                again = Traffic(appliance.client, name, urls, args.clients, rng)
                again.run(args.requests // 2)
                again.join()
                warm_p99 = percentile((a.seconds for a in again.answers), 0.99)
                warm_handler_p99 = percentile((a.handler_ms for a in again.answers), 0.99)
                # Who served each key before the scale-up (stable membership).
                owner_before = {
                    a.key: a.worker
                    for a in sorted(traffic.answers + again.answers, key=lambda a: a.started)
                }
        print("P6 sticky vs key-less routing (4 workers each)")
        s_fetches, s_bytes, s_seconds, s_distinct = results[sticky]
        k_fetches, k_bytes, k_seconds, k_distinct = results[keyless]
        line("sticky: S3 fetches / MiB", f"{s_fetches} / {s_bytes / MiB:.0f}", f"{s_distinct}")
        line("key-less: S3 fetches / MiB", f"{k_fetches} / {k_bytes / MiB:.0f}", f"{k_distinct}")
        line("key-less / sticky S3 bytes", f"{k_bytes / max(s_bytes, 1):.2f}x", ">= 1")
        line(
            "sticky p50 / p99 (ms)",
            f"{percentile(s_seconds, 0.5) * 1e3:.0f} / {percentile(s_seconds, 0.99) * 1e3:.0f}",
            "-",
        )
        line(
            "key-less p50 / p99 (ms)",
            f"{percentile(k_seconds, 0.5) * 1e3:.0f} / {percentile(k_seconds, 0.99) * 1e3:.0f}",
            "-",
        )
        line(
            "warm p99 (sticky, all cached) (ms)",
            f"{warm_p99 * 1e3:.0f} (handler {warm_handler_p99:.1f})",
            "-",
        )
        # Only the sticky service is needed from here on: free the machine.
        appliance.cli("scale", keyless, "0")

        print("P7 scale 4 -> 5 under load (sticky)")
        before_owners = owners(appliance, sticky)
        before = appliance.cache_counters(sticky, after=time.time())
        traffic = Traffic(appliance.client, sticky, urls, args.clients, rng)
        traffic.run()
        t_scale = time.time()
        appliance.cli("scale", sticky, "5")
        wait_for("5 ready workers", lambda: appliance.ready(sticky, 5), 300)
        wait_for(
            "partitions spread over 5 workers",
            lambda: len(set(owners(appliance, sticky).values())) == 5,
            120,
        )
        t_moved = time.monotonic()
        wait_for(
            "most keys requested once the partitions moved",
            lambda: len({a.key for a in traffic.since(t_moved)}) >= s_distinct * 0.9,
            300,
        )
        traffic.stop()
        after_owners = owners(appliance, sticky)
        moved = sorted(p for p, w in after_owners.items() if before_owners.get(p) != w)
        ordered = sorted(traffic.answers, key=lambda a: a.started)
        final_worker = {a.key: a.worker for a in ordered}
        # A moved key: served by one worker before the scale-up and by another at the end;
        # its first request is the first the new owner answered. A key never asked for
        # before is cold wherever it lands: its fetch is no cost of the move.
        cold = {a.key for a in ordered} - set(owner_before)
        moved_keys: dict[int, Answer] = {}
        for answer in ordered:
            key = answer.key
            if (
                key in owner_before
                and owner_before[key] != final_worker[key]
                and answer.worker == final_worker[key]
            ):
                moved_keys.setdefault(key, answer)
        after = appliance.cache_counters(sticky, after=time.time())
        delta = after - before
        first_p99 = percentile((a.seconds for a in moved_keys.values()), 0.99)
        moved_bytes = len(moved_keys) * size
        line("partitions moved", f"{len(moved)} of {len(after_owners)}", "~1/5")
        line("keys that changed worker", f"{len(moved_keys)}", "-")
        line(
            "S3 fetches / MiB during the scale-up",
            f"{delta['fetches']} / {delta['fetched_bytes'] / MiB:.0f}",
            f"{len(cold)} / {len(cold) * size / MiB:.0f} (keys asked for the first time)",
        )
        line(
            "first request to a moved key p99 (ms)",
            f"{first_p99 * 1e3:.0f} ({first_p99 / warm_p99:.1f}x warm)",
            "<= 2x warm p99",
        )
        # The end-to-end time includes waiting out the group's rebalance; the handler's
        # own time is what the cache decides.
        first_handler_p99 = percentile((a.handler_ms for a in moved_keys.values()), 0.99)
        line(
            "  its handler time p99 (ms)",
            f"{first_handler_p99:.1f} ({first_handler_p99 / warm_handler_p99:.1f}x warm)",
            "<= 2x warm handler p99",
        )
        line(
            "prefetched MiB / moved keys' MiB",
            f"{delta['prefetched_bytes'] / MiB:.0f} / {moved_bytes / MiB:.0f} "
            f"({delta['prefetched_bytes'] / max(moved_bytes, 1):.2f}x; "
            f"{delta['prefetched']} objects, {delta['prefetched_from_peers']} from peers)",
            "<= 1.2x",
        )
        line(
            "copied from other caches on this host MiB",
            f"{delta['adopted_bytes'] / MiB:.0f}",
            "(prefetches from peers and copies on a miss)",
        )
        rebalance_breakdown(appliance, sticky, moved_keys, since=t_scale)

        print("P9 rolling deploy v1 -> v2 under load (sticky, 5 workers)")
        before_fetches, before_bytes, before_copied = appliance.s3_counters(
            sticky, after=time.time()
        )
        traffic = Traffic(appliance.client, sticky, urls, args.clients, rng)
        traffic.run()
        handler = write_handler(work, sticky, sticky=True, marker="v2", disk=disk)
        appliance.cli("deploy", str(handler), "--name", sticky, "-m", "bench v2")
        wait_for("5 ready v2 workers", lambda: appliance.ready(sticky, 5, version=2), 300)
        during_fetches, during_bytes, copied = appliance.s3_counters(sticky, after=time.time())
        t_after = time.monotonic()
        wait_for(
            "traffic after the deploy",
            lambda: len(traffic.since(t_after)) >= args.requests // 2,
            300,
        )
        traffic.stop()
        after_fetches, after_bytes, _ = appliance.s3_counters(sticky, after=time.time())
        during = during_bytes - before_bytes
        after = after_bytes - during_bytes
        line(
            "S3 MiB during the deploy / working set",
            f"{during / MiB:.0f} / {working_set / MiB:.0f} ({during / working_set:.0%})",
            "<= 10%",
        )
        line(
            "S3 fetches during / after the deploy",
            f"{during_fetches - before_fetches} / {after_fetches - during_fetches}",
            "0 / 0",
        )
        line("S3 MiB after the deploy", f"{after / MiB:.0f}", "0")
        line(
            "copied from old workers' caches MiB",
            f"{(copied - before_copied) / MiB:.0f}",
            "the working set's hot part",
        )
        failed = len(traffic.errors)
        if failed:
            print(f"  {failed} failed requests during P9, e.g. {traffic.errors[0]}")
        counts = collections.Counter(a.worker for a in traffic.since(t_after))
        print(f"  answered after the deploy by {len(counts)} workers")
    finally:
        appliance.stop()
        for key in bucket_keys:
            s3.delete_object(Bucket=bucket, Key=key)


if __name__ == "__main__":
    main()
