"""Run step: a bounded pool of threads runs handlers, sync and async alike.

Each pool thread owns an event loop, so an async handler runs on the thread that picked
it up (no extra hop) and `concurrency` bounds both kinds (invariant I9). Threads cannot
be killed: a sync handler past its deadline is abandoned by the watchdog (the poll
thread answers for it) and its thread comes back to the pool only if it ever returns.
Pool threads are daemons so an abandoned one never holds the process at exit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from memrun.service import HandlerSpec

J = TypeVar("J")
_log = logging.getLogger(__name__)


class HandlerTimeout(Exception):
    """An async handler was cancelled at its deadline."""


class Lane:
    """One pool thread's event loop; replaced if a handler breaks it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return self.loop.run_until_complete(coro)
        except Exception:
            raise
        except BaseException:
            # SystemExit/KeyboardInterrupt raised in a task escape through the loop and
            # may leave it mid-iteration: start afresh rather than trust it.
            self._renew()
            raise

    def _renew(self) -> None:
        try:
            self.loop.close()
        except Exception:  # a loop that cannot close cleanly is dropped anyway
            _log.debug("closing a broken handler loop failed", exc_info=True)
        self.loop = asyncio.new_event_loop()


def run_handler(spec: HandlerSpec, ctx: Any, payload: Any, *, timeout_s: float, lane: Lane) -> Any:
    """The handler's return value. Async handlers are cancelled at `timeout_s`
    (HandlerTimeout); sync ones run to the end and are watched from outside."""
    if spec.is_async:
        return lane.run(_bounded(spec.fn(ctx, payload), timeout_s))
    return spec.fn(ctx, payload)


async def _bounded(coro: Coroutine[Any, Any, Any], timeout_s: float) -> Any:
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            return await coro
    except TimeoutError:
        if deadline.expired():
            raise HandlerTimeout(f"cancelled after {timeout_s:.3g} s") from None
        raise


class HandlerPool(Generic[J]):
    """`size` daemon threads taking jobs from one queue and calling `work(job, lane)`.

    The pool does not bound its queue: the caller keeps at most `size` jobs in flight.
    `work` must not raise; anything it lets escape is logged and the thread goes on.
    """

    def __init__(self, size: int, work: Callable[[J, Lane], None], *, name: str) -> None:
        self.size = size
        self._work = work
        self._queue: queue.SimpleQueue[J | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, job: J) -> None:
        self._queue.put(job)

    def stop(self) -> None:
        """Ask idle threads to exit; threads still in a handler finish it first."""
        for _ in self._threads:
            self._queue.put(None)

    def _serve(self) -> None:
        lane = Lane()
        work, get = self._work, self._queue.get
        while (job := get()) is not None:
            try:
                work(job, lane)
            except BaseException:
                _log.exception("the request pipeline let an exception escape")
        lane.loop.close()


class Deadlines(Generic[J]):
    """Jobs running in the pool, by deadline (monotonic seconds).

    Whoever removes a job first answers for it: the pool thread when its handler
    returns (`finish`), or the watchdog when the deadline passes (`expired`).
    """

    def __init__(self) -> None:
        self._running: dict[int, tuple[float, J]] = {}
        self._lock = threading.Lock()

    def start(self, job_id: int, job: J, deadline_s: float) -> None:
        with self._lock:
            self._running[job_id] = (deadline_s, job)

    def finish(self, job_id: int) -> bool:
        """True if the caller still owns the job (the watchdog has not taken it)."""
        with self._lock:
            return self._running.pop(job_id, None) is not None

    def expired(self, now_s: float) -> list[J]:
        with self._lock:
            late = [job_id for job_id, (deadline, _) in self._running.items() if deadline <= now_s]
            return [self._running.pop(job_id)[1] for job_id in late]

    def __len__(self) -> int:
        return len(self._running)
