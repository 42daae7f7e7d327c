"""A thousand invokes waiting at once on `memrun up` starve nothing (issue 12).

One service's handler sleeps 30 s; a thousand callers invoke it with a long wait. Meanwhile
probes, each with a one-second deadline (a functional bound, not a timing measurement),
read the health check and another service, and the workers of the first: every probe
answers, every worker stays `ready` with a fresh heartbeat, and every caller gets its
answer, or its request id at once when past the waiting bound (set low here so that both
happen)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.appliance import appliance_run, get, memrun

CALLERS = 1000
SLEEP_S = 30
WAIT_S = 90
WAITING_PER_TOKEN = 400  # per web process (two): past 800 waiting, callers get their id
PROBE_DEADLINE_S = 1.0
HEARTBEAT_MAX_AGE_S = 25.0  # the period is 10 s
WAVES = 10
RAMP_S = 5.0

HANDLER = """
import asyncio

from memrun import MemoryService

svc = MemoryService("{name}", concurrency={concurrency}, timeout_seconds=120)


@svc.handler(sticky_key="user")
async def handle(ctx, request):
    await asyncio.sleep(request["sleep_s"])
    return {{"user": request["user"]}}
"""


@dataclass
class Probes:
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    rounds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def probe(url: str, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=PROBE_DEADLINE_S) as response:
        return response.status, json.loads(response.read())


def run_probes(base: str, token: str, service: str, other: str, probes: Probes) -> None:
    checks: list[tuple[str, Callable[[int, Any], str | None]]] = [
        ("/api/v1/health", lambda status, body: None if status == 200 else f"health {status}"),
        (f"/api/v1/services/{other}", lambda status, body: None if status == 200 else "other"),
        (f"/api/v1/services/{service}/workers", workers_problem),
    ]
    while not probes.stop.is_set():
        for path, problem in checks:
            started = time.monotonic()
            try:
                found = problem(*probe(base + path, token))
            except Exception as exc:  # a timeout past the deadline is the failure sought
                found = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started > PROBE_DEADLINE_S:
                found = found or "answered past the deadline"
            if found:
                at = started - probes.started
                probes.failures.append(f"{path} at {at:.1f} s: {found}")
        probes.rounds += 1
        probes.stop.wait(0.5)


def workers_problem(status: int, workers: Any) -> str | None:
    if status != 200 or not workers:
        return f"workers {status} {workers}"
    for worker in workers:
        if worker["state"] != "ready":
            return f"{worker['name']} is {worker['state']}"
        if (worker["heartbeat_age_s"] or 0) > HEARTBEAT_MAX_AGE_S:
            return f"{worker['name']}'s heartbeat is {worker['heartbeat_age_s']} s old"
    return None


async def invoke(port: int, path: str, token: str, body: bytes) -> tuple[int, dict, float]:
    """One POST on its own connection (a thousand of them at once, without a client
    library): status, JSON body, seconds until the answer."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload), time.monotonic() - started


async def invoke_all(port: int, service: str, token: str) -> list[tuple[int, dict, float]]:
    """The callers arrive in waves over RAMP_S seconds (all are waiting long before the
    first handler wakes): a thousand TCP connects in the same millisecond measure the
    kernel's accept queue on a busy machine more than the control plane."""
    path = f"/api/v1/services/{service}/invoke?wait={WAIT_S}"
    bodies = [json.dumps({"user": f"u{i}", "sleep_s": SLEEP_S}).encode() for i in range(CALLERS)]
    calls = []
    for wave in range(WAVES):
        calls += [
            asyncio.create_task(invoke(port, path, token, body))
            for body in bodies[wave * CALLERS // WAVES : (wave + 1) * CALLERS // WAVES]
        ]
        await asyncio.sleep(RAMP_S / WAVES)
    return await asyncio.gather(*calls)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_thousand_waiting_invokes_starve_nothing(
    tmp_path: Path, kafka_bootstrap: str, redis_url: str, service_name: Callable[[], str]
) -> None:
    appliance = appliance_run(tmp_path, MEMRUN_INVOKE_WAITING_PER_TOKEN=str(WAITING_PER_TOKEN))
    up = next(appliance)
    try:
        name, other = service_name(), service_name()
        handler = tmp_path / "sleepy.py"
        handler.write_text(HANDLER.format(name=name, concurrency=CALLERS))
        deployed = memrun(up.home, "deploy", str(handler), "--name", name, MEMRUN_URL=up.url)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        token = (up.home / "cli-token").read_text().strip()
        created = urllib.request.Request(
            f"{up.url}/api/v1/services",
            data=json.dumps({"name": other}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(created, timeout=30) as response:
            assert response.status == 201
        assert get(f"{up.url}/api/v1/services/{name}/workers", token)[0] == 200

        probes = Probes()
        port = int(up.url.rsplit(":", 1)[1])
        prober = threading.Thread(target=run_probes, args=(up.url, token, name, other, probes))
        prober.start()
        try:
            answers = asyncio.run(invoke_all(port, name, token))
        finally:
            probes.stop.set()
            prober.join()

        done = [a for a in answers if a[0] == 200]
        queued = [a for a in answers if a[0] == 202]
        assert len(done) + len(queued) == CALLERS, {a[0] for a in answers}
        assert all(body["status"] == "done" and body["ok"] for _, body, _ in done)
        # Each caller got its own answer: the user it sent.
        assert all(
            body["result"]["user"] == f"u{i}"
            for i, (status, body, _) in enumerate(answers)
            if status == 200
        )
        assert done, "nobody waited for an answer"
        assert queued, f"nobody was past the bound of {WAITING_PER_TOKEN} waiting per process"
        assert probes.failures == []
        assert probes.rounds >= SLEEP_S // 2, probes.rounds
        # Past the bound, the id comes at once (the request still runs): before the
        # handler's sleep could have ended, so before any answer of those who waited.
        assert all(
            re.fullmatch(rf"{name}\.[A-Za-z0-9_-]{{36}}", body["request_id"])
            for _, body, _ in queued
        )
        assert max(elapsed for _, _, elapsed in queued) < min(elapsed for _, _, elapsed in done)
    finally:
        appliance.close()
