"""Single flight: one run per key at a time, its outcome shared by every caller waiting."""

from __future__ import annotations

import threading
import time

import pytest

from worker_daemon.cache.singleflight import SingleFlight

WAITERS = 15


def wait_until(condition: object, *, timeout_s: float = 10.0) -> None:
    """Poll `condition()` until true (the waiters' arrival is not otherwise observable)."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def run_with_waiters(flight: SingleFlight[str], work_result: str | Exception) -> list[object]:
    release = threading.Event()
    calls: list[int] = []
    outcomes: list[object] = []

    def work() -> str:
        calls.append(1)
        release.wait()
        if isinstance(work_result, Exception):
            raise work_result
        return work_result

    def call() -> None:
        try:
            outcomes.append(flight.run("key", work))
        except Exception as exc:
            outcomes.append(exc)

    leader = threading.Thread(target=call)
    leader.start()
    wait_until(lambda: flight.in_flight() == 1)
    waiters = [threading.Thread(target=call) for _ in range(WAITERS)]
    for thread in waiters:
        thread.start()
    wait_until(lambda: flight.waiting() == WAITERS)
    release.set()
    for thread in [leader, *waiters]:
        thread.join()
    assert len(calls) == 1 and flight.in_flight() == 0 and flight.waiting() == 0
    return outcomes


def test_waiters_share_the_one_result() -> None:
    outcomes = run_with_waiters(SingleFlight(), "value")
    assert outcomes == ["value"] * (WAITERS + 1)


def test_a_failure_fails_every_waiter_with_the_same_error() -> None:
    error = RuntimeError("download of s3://b/k failed")
    outcomes = run_with_waiters(SingleFlight(), error)
    assert len(outcomes) == WAITERS + 1 and all(o is error for o in outcomes)


def test_the_next_call_after_a_failure_runs_again() -> None:
    flight: SingleFlight[int] = SingleFlight()
    with pytest.raises(ValueError):
        flight.run("k", lambda: int("x"))
    assert flight.run("k", lambda: 7) == 7
