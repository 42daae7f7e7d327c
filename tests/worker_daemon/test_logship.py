"""Log shipping from a worker: batches, capture of events, records and printed lines, a
control plane that goes away and comes back, and the bound beyond which lines are dropped
(and counted). A local HTTP server stands in for the control plane where it must stop and
start; the real one (live_server) takes the lines end to end."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from memrun import Client as MemrunClient
from tests.worker_daemon.harness import WorkerProcess, make_package, worker_env
from worker_daemon.logcapture import LogShipping
from worker_daemon.logs import EventLog, JsonLogFormatter, own_text_lines
from worker_daemon.logship import HttpLogTransport, LogShipper, ShipSettings

WAIT_S = 10.0
FAST = ShipSettings(batch_lines=10, interval_s=0.05, backoff_min_s=0.01, backoff_max_s=0.05)


class FakeControlPlane:
    """An HTTP server that takes log batches on any path, and can be stopped and started
    again on the same port. `status` is what it answers; `hold` keeps requests waiting."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.paths: list[str] = []
        self.headers: list[str] = []
        self.status = 201
        self.hold = threading.Event()
        self.hold.set()
        self.holding = threading.Event()
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def lines(self) -> list[dict[str, Any]]:
        with self._cond:
            return [line for batch in self.batches for line in batch]

    def start(self) -> None:
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not plane.hold.is_set():
                    plane.holding.set()
                    plane.hold.wait(WAIT_S)
                status = plane.status
                if status == 201:
                    with plane._cond:
                        plane.batches.append(json.loads(body)["lines"])
                        plane.paths.append(self.path)
                        plane.headers.append(self.headers["Authorization"])
                        plane._cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"message": f"answered {status}"}).encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def wait_for_lines(self, count: int) -> list[dict[str, Any]]:
        with self._cond:
            got = self._cond.wait_for(lambda: sum(map(len, self.batches)) >= count, timeout=WAIT_S)
        assert got, f"the control plane got {len(self.lines)} lines, expected {count}"
        return self.lines


class Reports:
    """The shipper's own reports, with a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()

    def __call__(self, event: str, /, **fields: Any) -> None:
        with self._cond:
            self.events.append((event, fields))
            self._cond.notify_all()

    def wait_for(self, event: str) -> dict[str, Any]:
        with self._cond:
            assert self._cond.wait_for(
                lambda: any(name == event for name, _ in self.events), timeout=WAIT_S
            ), f"no {event} report; got {self.events}"
            return next(fields for name, fields in self.events if name == event)


@pytest.fixture
def plane() -> Iterator[FakeControlPlane]:
    plane = FakeControlPlane()
    yield plane
    plane.hold.set()
    if plane._server is not None:
        plane.stop()


@pytest.fixture
def make_shipper(plane: FakeControlPlane) -> Iterator[Callable[..., tuple[LogShipper, Reports]]]:
    shippers: list[LogShipper] = []

    def make(settings: ShipSettings = FAST, start: bool = True) -> tuple[LogShipper, Reports]:
        reports = Reports()
        transport = HttpLogTransport(url=plane.url, worker_id="w-1", token="mrw_secret")
        shipper = LogShipper(transport, settings, report=reports)
        if start:
            shipper.start()
        shippers.append(shipper)
        return shipper, reports

    yield make
    for shipper in shippers:
        shipper.close(timeout_s=1)


def put(shipper: LogShipper, *numbers: int) -> None:
    for n in numbers:
        shipper.put(ts=1_700_000_000 + n, level="info", event="log", message=f"line {n}")


def numbers(lines: list[dict[str, Any]]) -> list[int]:
    return [int(line["message"].split()[1]) for line in lines if line["event"] == "log"]


def test_full_batches_go_at_once_and_flush_sends_the_rest(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    shipper, _ = make_shipper(ShipSettings(batch_lines=10, interval_s=3600))
    put(shipper, *range(25))
    plane.wait_for_lines(20)  # two full batches, without waiting for the interval
    assert shipper.flush(WAIT_S)
    assert [len(batch) for batch in plane.batches] == [10, 10, 5]
    assert numbers(plane.lines) == list(range(25))
    assert plane.paths[0] == "/api/v1/workers/w-1/logs"
    assert plane.headers[0] == "Bearer mrw_secret"
    assert plane.lines[0] == {
        "ts": 1_700_000_000,
        "level": "info",
        "event": "log",
        "request_id": "",
        "message": "line 0",
        "fields": {},
    }
    assert shipper.stats() == {
        "sent_lines": 25,
        "sent_batches": 3,
        "failures": 0,
        "dropped": 0,
        "rejected_lines": 0,
        "queued": 0,
    }


def test_a_part_batch_goes_after_the_interval(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    shipper, _ = make_shipper()
    put(shipper, 1, 2, 3)
    assert numbers(plane.wait_for_lines(3)) == [1, 2, 3]


def test_batches_stay_under_the_byte_bound(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    shipper, _ = make_shipper(ShipSettings(batch_lines=500, batch_bytes=4096, interval_s=3600))
    for n in range(20):
        shipper.put(ts=0, level="info", event="log", message=f"line {n} " + "x" * 1000)
    assert shipper.flush(WAIT_S)
    assert numbers(plane.lines) == list(range(20))
    assert all(len(json.dumps({"lines": batch})) <= 4096 for batch in plane.batches)
    assert len(plane.batches) >= 5


def test_nothing_is_lost_while_the_control_plane_is_away(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    shipper, reports = make_shipper(
        ShipSettings(
            batch_lines=10,
            interval_s=0.05,
            max_queue_lines=50,
            backoff_min_s=0.01,
            backoff_max_s=0.05,
        )
    )
    put(shipper, *range(5))
    plane.wait_for_lines(5)
    plane.stop()
    put(shipper, *range(5, 55))  # the queue's bound, plus the batch on its way
    assert "Connection refused" in reports.wait_for("logship.unreachable")["error"]
    plane.start()
    assert shipper.flush(WAIT_S)
    assert numbers(plane.lines) == list(range(55))
    assert shipper.stats()["dropped"] == 0
    assert shipper.stats()["failures"] >= 1
    reports.wait_for("logship.recovered")


def test_beyond_the_bound_the_oldest_go_and_are_counted(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    plane.stop()
    shipper, reports = make_shipper(
        ShipSettings(
            batch_lines=5,
            interval_s=0.01,
            max_queue_lines=20,
            backoff_min_s=0.01,
            backoff_max_s=0.05,
        )
    )
    put(shipper, 0)
    reports.wait_for("logship.unreachable")  # line 0 is the batch held for retry
    put(shipper, *range(1, 100))
    plane.start()
    assert shipper.flush(WAIT_S)

    got = numbers(plane.lines)
    (report,) = [line for line in plane.lines if line["event"] == "logship.dropped"]
    dropped = report["fields"]["dropped"]
    assert dropped == shipper.stats()["dropped"] == 79
    assert got == [0, *range(80, 100)]
    assert report["level"] == "warning"
    assert "dropped 79 log lines" in report["message"]


def test_the_hot_path_does_not_wait_for_a_stuck_control_plane(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    plane.hold.clear()
    shipper, _ = make_shipper(ShipSettings(batch_lines=10, interval_s=0.01, max_queue_lines=100))
    put(shipper, 0)
    assert plane.holding.wait(WAIT_S)  # the sender is inside a request that hangs
    done = threading.Event()

    def log_a_lot() -> None:
        put(shipper, *range(1, 1001))
        done.set()

    threading.Thread(target=log_a_lot, daemon=True).start()
    assert done.wait(WAIT_S), "put() waited on the stuck control plane"
    assert shipper.stats()["dropped"] == 1000 - 100
    plane.hold.set()
    assert shipper.flush(WAIT_S)


def test_close_gives_up_within_its_timeout(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    plane.stop()
    shipper, reports = make_shipper()
    put(shipper, *range(3))
    reports.wait_for("logship.unreachable")
    started = time.monotonic()
    assert shipper.close(timeout_s=0.3) is False
    assert time.monotonic() - started < 2
    assert shipper.stats()["queued"] == 3


def test_a_refused_batch_is_dropped_and_reported_and_a_refused_credential_stops_shipping(
    plane: FakeControlPlane, make_shipper: Callable[..., tuple[LogShipper, Reports]]
) -> None:
    shipper, reports = make_shipper()
    plane.status = 422
    put(shipper, 0)
    rejected = reports.wait_for("logship.rejected")
    assert rejected["status"] == 422 and "answered 422" in rejected["error"]
    plane.status = 201
    put(shipper, 1)
    assert numbers(plane.wait_for_lines(1)) == [1]
    assert shipper.stats()["rejected_lines"] == 1

    plane.status = 401
    put(shipper, 2)
    assert reports.wait_for("logship.disabled")["status"] == 401
    plane.status = 201
    put(shipper, 3)
    assert shipper.flush(WAIT_S)
    assert numbers(plane.lines) == [1]


@contextlib.contextmanager
def fake_std_streams() -> Iterator[tuple[io.BytesIO, io.BytesIO]]:
    """sys.stdout and sys.stderr over byte buffers the test can read (set in the test
    itself: pytest's capture resets them between a fixture's setup and the test)."""
    out, err = io.BytesIO(), io.BytesIO()
    streams = [
        io.TextIOWrapper(buffer, encoding="utf-8", write_through=True) for buffer in (out, err)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stdout", streams[0])
        patch.setattr(sys, "stderr", streams[1])
        yield out, err
    for stream in streams:
        stream.detach()  # so that the buffers stay open to be read


def test_capture_ships_events_records_and_printed_lines(plane: FakeControlPlane) -> None:
    logger = logging.getLogger("memrun.service.svc")
    with fake_std_streams() as (out, err):
        shipping = LogShipping(
            HttpLogTransport(url=plane.url, worker_id="w-1", token="mrw_secret"), FAST
        )
        shipping.shipper.start()
        shipping.capture()
        # Made after capture, as the worker makes them: they write through the tee.
        log = EventLog(worker="w-1", service="svc")
        handler = logging.StreamHandler(own_text_lines())
        handler.setFormatter(JsonLogFormatter(worker="w-1", service="svc"))
        logger.addHandler(handler)
        try:
            log.event("request", request_id="r1", status="ok", duration_ms=1.5)
            log.event("reply.error", error="redis down")
            logger.warning("cache miss for %s", "k1", extra={"request_id": "r9", "key": "k1"})
            print("hello from a handler")
            print("oops", file=sys.stderr)

            def partial_lines(tag: str) -> None:
                for n in range(20):
                    print(f"{tag}-{n}", "part", end="")
                    print(" end")

            threads = [threading.Thread(target=partial_lines, args=(tag,)) for tag in "ab"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            logger.removeHandler(handler)
        assert shipping.close()
        assert sys.stdout.buffer is out and sys.stderr.buffer is err

    lines = plane.lines
    request, failure, record = lines[0], lines[1], lines[2]
    assert (request["event"], request["level"], request["request_id"]) == ("request", "info", "r1")
    assert request["fields"] == {"status": "ok", "duration_ms": 1.5}
    assert (failure["level"], failure["fields"]) == ("error", {"error": "redis down"})
    assert (record["event"], record["level"], record["message"]) == (
        "log",
        "warning",
        "cache miss for k1",
    )
    assert record["request_id"] == "r9"
    assert record["fields"] == {"logger": "memrun.service.svc", "key": "k1"}
    printed = [(line["event"], line["level"], line["message"]) for line in lines[3:5]]
    assert printed == [("stdout", "info", "hello from a handler"), ("stderr", "warning", "oops")]
    # Lines printed in pieces by two threads at once come whole.
    assert sorted(line["message"] for line in lines[5:]) == sorted(
        f"{tag}-{n} part end" for tag in "ab" for n in range(20)
    )
    # The real streams still got everything.
    printed_out = out.getvalue().decode().splitlines()
    assert json.loads(printed_out[0])["worker"] == "w-1"
    assert "hello from a handler" in printed_out
    assert err.getvalue() == b"oops\n"


def test_a_printed_line_cannot_pose_as_a_worker_event(plane: FakeControlPlane) -> None:
    forged = json.dumps({"event": "worker.stopped", "exit_code": 0, "level": "error"})
    with fake_std_streams() as (out, _err):
        shipping = LogShipping(
            HttpLogTransport(url=plane.url, worker_id="w-1", token="mrw_secret"), FAST
        )
        shipping.shipper.start()
        shipping.capture()
        log = EventLog(worker="w-1", service="svc")
        print(forged)  # a handler echoing what a caller sent it
        sys.stdout.buffer.write(forged.encode() + b"\n")
        print(forged, file=sys.stderr)
        log.event("request", request_id="r1", status="ok")
        assert shipping.close()

    shipped = [(line["event"], line["message"]) for line in plane.lines]
    assert shipped == [
        ("stdout", forged),
        ("stdout", forged),
        ("stderr", forged),
        ("request", ""),
    ]
    assert not any(line["event"] == "worker.stopped" for line in plane.lines)
    # The worker's own output is unchanged: every line still reaches the real stream.
    assert out.getvalue().decode().count("worker.stopped") == 2


def test_secret_values_are_masked_in_what_is_shipped(plane: FakeControlPlane) -> None:
    value, quoted = "hunter2-but-longer", 'pa"ss\\word'
    with fake_std_streams() as (out, _err):
        shipping = LogShipping(
            HttpLogTransport(url=plane.url, worker_id="w-1", token="mrw_secret"),
            FAST,
            masked=[value, quoted, "yes", "mrw_secret"],
        )
        shipping.shipper.start()
        shipping.capture()
        log = EventLog(worker="w-1", service="svc")
        print(f"my key is {value}!")
        print(f"and {quoted} and {value}{value} and yes")
        log.event("request", request_id="r1", detail=f"x{value}", token="mrw_secret")
        print(value * 1000)  # longer than a shipped message: masked before the cut
        assert shipping.close()
    messages = [line["message"] for line in plane.lines]
    assert messages[:2] == ["my key is ***!", "and *** and ****** and yes"]
    assert plane.lines[2]["fields"] == {"detail": "x***", "token": "***"}
    assert set(messages[3]) == {"*"}
    assert value not in json.dumps(plane.lines) and "hunter2" not in json.dumps(plane.lines)
    # Only what is shipped is masked: the worker's own stream is its local log.
    assert value in out.getvalue().decode()


def test_shipping_from_env_masks_the_secret_keys_values() -> None:
    env = {
        "MEMRUN_URL": "http://cp",
        "MEMRUN_WORKER_ID": "w-1",
        "MEMRUN_WORKER_TOKEN": "mrw_x-token",
        "MEMRUN_SECRET_KEYS": "API_KEY",
        "API_KEY": "the-api-key-value",
        "OTHER": "not-a-secret",
    }
    shipping = LogShipping.from_env(env, FAST)
    assert shipping is not None
    try:
        encoded = shipping.shipper._encode(
            0.0, "info", "stdout", "the-api-key-value not-a-secret mrw_x-token", "", {}
        )
    finally:
        shipping.close(timeout_s=0.1)
    assert json.loads(encoded)["message"] == "*** not-a-secret ***"


_CLOSING_WORKER = """
import sys
from worker_daemon.logcapture import LogShipping
from worker_daemon.logship import HttpLogTransport, ShipSettings

transport = HttpLogTransport(url=sys.argv[1], worker_id="w-1", token="mrw_x")
shipping = LogShipping(transport, ShipSettings(interval_s=600, close_timeout_s=30))
shipping.shipper.start()
shipping.capture()
print("the last line")
sys.exit(0 if shipping.close() else 3)
"""


def test_a_sigterm_while_closing_does_not_lose_the_last_lines(plane: FakeControlPlane) -> None:
    """A supervisor stops a worker it had drained with one more SIGTERM, which may come
    while the worker ships its last lines."""
    plane.hold.clear()
    process = subprocess.Popen(
        [sys.executable, "-c", _CLOSING_WORKER, plane.url],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert plane.holding.wait(WAIT_S), "the closing worker never sent its lines"
        process.send_signal(signal.SIGTERM)
        plane.hold.set()
        assert process.wait(WAIT_S) == 0
    finally:
        process.kill()
        process.wait()
    assert [line["message"] for line in plane.lines] == ["the last line"]


def test_shipping_is_off_without_the_provisioner_env() -> None:
    env = {"MEMRUN_URL": "http://cp", "MEMRUN_WORKER_ID": "w-1", "MEMRUN_WORKER_TOKEN": "mrw_x"}
    for missing in env:
        assert LogShipping.from_env({k: v for k, v in env.items() if k != missing}) is None


@pytest.mark.django_db(transaction=True)
def test_a_worker_ships_to_the_real_control_plane(
    live_server: Any,
    service_name: Callable[[], str],
) -> None:
    from apps.services.services import service_create
    from apps.workers.models import WorkerLogLine
    from apps.workers.services import worker_create

    service = service_create(name=service_name(), partitions=1)
    worker, credential = worker_create(service=service, name=f"{service.name}-w1")
    env = {
        "MEMRUN_URL": live_server.url,
        "MEMRUN_WORKER_ID": worker.name,
        "MEMRUN_WORKER_TOKEN": credential,
    }
    with fake_std_streams():
        shipping = LogShipping.from_env(env, ShipSettings(batch_lines=100, interval_s=0.05))
        assert shipping is not None
        log = EventLog(worker=worker.name, service=service.name)
        for n in range(120):
            log.event("request", request_id=f"r{n}", status="ok")
            print(f"printed {n}")
        assert shipping.close(timeout_s=WAIT_S)

    assert shipping.shipper.stats()["sent_batches"] >= 3
    stored = WorkerLogLine.objects.filter(worker=worker)
    assert stored.count() == 240
    assert stored.filter(event="request", request_id="r119").exists()
    assert sorted(stored.filter(event="stdout").values_list("message", flat=True)) == sorted(
        f"printed {n}" for n in range(120)
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_provisioned_worker_process_ships_its_lines(
    live_server: Any,
    api_token: tuple[Any, str],
    service_name: Callable[[], str],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """`memrun worker` with the provisioner's env: the runtime's events, the handler's
    printed lines and its `ctx.log` records reach the control plane, request id and all."""
    from apps.services.services import service_create
    from apps.workers.models import WorkerLogLine
    from apps.workers.services import worker_create

    service = service_create(name=service_name(), partitions=1)
    worker, credential = worker_create(service=service, name=f"{service.name}-w1")
    env = worker_env(
        service=service.name, bootstrap=kafka_bootstrap, redis_url=redis_url, cache_root=tmp_path
    )
    env.update(
        MEMRUN_URL=live_server.url, MEMRUN_WORKER_ID=worker.name, MEMRUN_WORKER_TOKEN=credential
    )
    process = WorkerProcess(
        service=service.name,
        package=make_package(tmp_path / "pkg", service=service.name, handler="log_ops.py"),
        worker_id=worker.name,
        env=env,
        log_path=tmp_path / "worker.log",
    )
    try:
        client = MemrunClient(live_server.url, api_token[1])
        # Queued: the service has a worker but no deployment record.
        done = client.invoke_request(service.name, {}, wait=30, queue=True)
        assert done.ok, done
    finally:
        process.terminate()
        assert process.proc.wait(WAIT_S * 3) == 0, process.log_path.read_text()[-4000:]

    stored = WorkerLogLine.objects.filter(worker=worker)
    rid = done.request_id
    shipped = {(line.event, line.level, line.message) for line in stored.filter(request_id=rid)}
    assert ("request", "info", "") in shipped
    assert ("log", "warning", f"logged by {rid}") in shipped
    printed = {(line.event, line.level) for line in stored.filter(message__endswith=rid)}
    assert {("stdout", "info"), ("stderr", "warning")} <= printed
    assert {"worker.starting", "worker.stopped"} <= set(stored.values_list("event", flat=True))
    # What it shipped it also wrote to its own stdout, as before.
    assert process.find("request", request_id=rid)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("handler", ["print_ids_sync.py", "print_ids_async.py"])
def test_concurrent_handlers_lines_carry_their_own_request_id(
    handler: str,
    live_server: Any,
    api_token: tuple[Any, str],
    service_name: Callable[[], str],
    kafka_bootstrap: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Handlers running at once (four on four pool threads, they meet at a barrier) print,
    write to stderr and log through a library; each line carries the id of the request
    whose handler wrote it, and the log API filters by it."""
    from apps.services.services import service_create
    from apps.workers.models import WorkerLogLine
    from apps.workers.services import worker_create
    from memrun.cli.logs import format_line

    service = service_create(name=service_name(), partitions=4)
    worker, credential = worker_create(service=service, name=f"{service.name}-w1")
    env = worker_env(
        service=service.name, bootstrap=kafka_bootstrap, redis_url=redis_url, cache_root=tmp_path
    )
    env.update(
        MEMRUN_URL=live_server.url, MEMRUN_WORKER_ID=worker.name, MEMRUN_WORKER_TOKEN=credential
    )
    process = WorkerProcess(
        service=service.name,
        package=make_package(tmp_path / "pkg", service=service.name, handler=handler),
        worker_id=worker.name,
        env=env,
        log_path=tmp_path / "worker.log",
    )
    client = MemrunClient(live_server.url, api_token[1])
    try:
        request_ids = [client.submit(service.name, {"n": n}, queue=True) for n in range(8)]
        for request_id in request_ids:
            assert client.result(request_id, wait=60).ok
    finally:
        process.terminate()
        assert process.proc.wait(WAIT_S * 3) == 0, process.log_path.read_text()[-4000:]

    written = list(
        # Lines that begin with a request id, as the control plane makes them (requestids.py).
        WorkerLogLine.objects.filter(
            worker=worker, message__regex=rf"^{service.name}\.[A-Za-z0-9_-]{{36}} "
        ).values("event", "request_id", "message")
    )
    assert len(written) == 8 * 5
    for line in written:
        assert line["request_id"] == line["message"].split()[0], line
    assert {line["request_id"] for line in written} == set(request_ids)
    assert {line["event"] for line in written} == {"stdout", "stderr", "log"}

    rid = request_ids[0]
    page = client.logs(service.name, request_id=rid, limit=100)
    assert {line["request_id"] for line in page["lines"]} == {rid}
    assert sorted(line["message"] for line in page["lines"] if line["event"] != "request") == [
        f"{rid} complained",
        f"{rid} logged",
        f"{rid} printed part 0",
        f"{rid} printed part 1",
        f"{rid} printed part 2",
    ]
    assert all(f"request_id={rid}" in format_line(line) for line in page["lines"])
