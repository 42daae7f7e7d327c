"""How the appliance's web server runs, for `memrun up` and the Docker image alike:
gunicorn supervises the processes (a crashed or wedged one is replaced, a graceful
restart drains), and each process serves ASGI with uvicorn's event loop, so a waiting
invoke is a coroutine, not one of a few threads that heartbeats and health also need.

Used as `gunicorn -c python:memrun_site.gunicorn_conf memrun_site.asgi:application`;
the bind address and the number of processes come from the command line.
"""

import gc
from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    # uvloop and httptools: the fastest loop and parser uvicorn has. No lifespan: the app
    # has no startup work that must finish before the first request. No access log: at
    # a thousand invokes a second it would cost more than the invokes.
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "off",
        "access_log": False,
    }


worker_class = "memrun_site.gunicorn_conf.Worker"
# The listen queue for bursts of new connections (the kernel caps it at somaxconn).
backlog = 4096
# In-flight invokes get this long to finish on a restart or Ctrl-C.
graceful_timeout = 20
# A process that stops notifying the arbiter for this long is replaced.
timeout = 60
# Long enough for a client's connection pool to reuse its connections between calls.
keepalive = 5
# Access lines are off (see Worker); errors go to stderr, which `memrun up` shows.
accesslog = None
errorlog = "-"


def post_worker_init(worker: Any) -> None:
    """Freeze what the process has loaded (Django, ninja, the apps: ~120,000 objects that
    live as long as it does), so that Python's cyclic collector never walks them again.
    Unfrozen, each full collection walked them all, 75 ms of CPU here and up to a second
    of wall time on a busy machine, in the middle of whichever invokes were waiting:
    the one-caller p99 of bench/bench_invoke_http.py."""
    gc.collect()
    gc.freeze()
