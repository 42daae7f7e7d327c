# /// script
# dependencies = ["humanize==4.12.3", "memrun-test-envprobe==1.0"]
# ///
"""A service whose PEP 723 dependencies come from package indexes: humanize from the
machine's index (PyPI here), the env probe from the test's own (tests/fixtures/envprobe.py)."""

import os

import humanize
import memrun_test_envprobe

from memrun import MemoryService

svc = MemoryService(os.environ["MEMRUN_SERVICE"], concurrency=2, timeout_seconds=30)


@svc.handler(sticky_key="user")
def handle(ctx, request):
    return {"size": humanize.naturalsize(request["bytes"]), "probed": memrun_test_envprobe.PROBED}
