"""The handler pool: a bound on concurrent work, one event loop per thread, deadlines."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

from memrun.service import HandlerSpec
from worker_daemon.executor import Deadlines, HandlerPool, HandlerTimeout, Lane, run_handler

WAIT_S = 10.0


def sync_spec(fn: Any) -> HandlerSpec:
    return HandlerSpec(fn=fn, is_async=False)


def async_spec(fn: Any) -> HandlerSpec:
    return HandlerSpec(fn=fn, is_async=True)


def test_at_most_size_jobs_run_at_once_and_all_run() -> None:
    size, jobs = 3, 30
    running = 0
    high_water = 0
    lock = threading.Lock()
    release = threading.Semaphore(0)
    done = threading.Semaphore(0)

    def work(job: int, lane: Lane) -> None:
        nonlocal running, high_water
        with lock:
            running += 1
            high_water = max(high_water, running)
        release.acquire(timeout=WAIT_S)
        with lock:
            running -= 1
        done.release()

    pool: HandlerPool[int] = HandlerPool(size, work, name="t")
    pool.start()
    for job in range(jobs):
        pool.submit(job)
    for _ in range(jobs):
        release.release()
    for _ in range(jobs):
        assert done.acquire(timeout=WAIT_S)
    pool.stop()
    assert high_water <= size


def test_each_thread_keeps_one_event_loop_for_its_async_handlers() -> None:
    loops: dict[str, set[int]] = {}
    lock = threading.Lock()
    done = threading.Semaphore(0)

    async def handler(ctx: Any, request: Any) -> int:
        loop = asyncio.get_running_loop()
        with lock:
            loops.setdefault(threading.current_thread().name, set()).add(id(loop))
        return int(request) * 2

    results: list[int] = []

    def work(job: int, lane: Lane) -> None:
        results.append(run_handler(async_spec(handler), None, job, timeout_s=5, lane=lane))
        done.release()

    pool: HandlerPool[int] = HandlerPool(2, work, name="t")
    pool.start()
    for job in range(20):
        pool.submit(job)
    for _ in range(20):
        assert done.acquire(timeout=WAIT_S)
    pool.stop()
    assert sorted(results) == [2 * j for j in range(20)]
    assert all(len(ids) == 1 for ids in loops.values())
    assert all(name.startswith("t-") for name in loops)


def test_an_async_handler_is_cancelled_at_its_deadline() -> None:
    cancelled = threading.Event()

    async def slow(ctx: Any, request: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    lane = Lane()
    with pytest.raises(HandlerTimeout):
        run_handler(async_spec(slow), None, None, timeout_s=0.05, lane=lane)
    assert cancelled.is_set()


def test_a_timeout_error_raised_by_the_handler_itself_is_not_a_deadline() -> None:
    async def raises(ctx: Any, request: Any) -> None:
        raise TimeoutError("upstream timed out")

    with pytest.raises(TimeoutError, match="upstream"):
        run_handler(async_spec(raises), None, None, timeout_s=5, lane=Lane())


def test_system_exit_in_an_async_handler_leaves_a_working_lane() -> None:
    async def exits(ctx: Any, request: Any) -> None:
        sys.exit(3)

    async def fine(ctx: Any, request: Any) -> str:
        return "ok"

    lane = Lane()
    with pytest.raises(SystemExit):
        run_handler(async_spec(exits), None, None, timeout_s=5, lane=lane)
    assert run_handler(async_spec(fine), None, None, timeout_s=5, lane=lane) == "ok"


def test_sync_handlers_run_on_the_calling_thread() -> None:
    assert run_handler(sync_spec(lambda ctx, req: req + 1), None, 1, timeout_s=5, lane=Lane()) == 2


def test_a_pool_thread_survives_work_that_raises() -> None:
    done = threading.Semaphore(0)

    def work(job: int, lane: Lane) -> None:
        if job == 0:
            raise SystemExit("from work")
        done.release()

    pool: HandlerPool[int] = HandlerPool(1, work, name="t")
    pool.start()
    pool.submit(0)
    pool.submit(1)
    assert done.acquire(timeout=WAIT_S)
    pool.stop()


def test_deadlines_are_answered_once_either_by_the_thread_or_the_watchdog() -> None:
    deadlines: Deadlines[str] = Deadlines()
    now = time.monotonic()
    deadlines.start(1, "late", now - 1)
    deadlines.start(2, "on-time", now + 60)
    assert deadlines.expired(now) == ["late"]
    assert deadlines.expired(now) == []
    assert not deadlines.finish(1)  # the watchdog took it
    assert deadlines.finish(2)
    assert len(deadlines) == 0
