"""Root test configuration: each area's fixtures live in tests/fixtures/ and load here."""

import gc
from collections.abc import Iterator

import pytest

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.django",
    "tests.fixtures.appliance",
    "tests.fixtures.hetzner",
    "tests.fixtures.bootstrap",
]


def pytest_configure(config: pytest.Config) -> None:
    # The test process makes and drops many Kafka clients and admin futures. A garbage
    # collection that starts on one of librdkafka's own threads (whichever thread happens
    # to allocate) and frees a client there crashes the process (confluent-kafka-python
    # #1761, #2129): CI segfaulted that way between tests. So automatic collection is off
    # here and the collector runs after each test, on the main thread.
    gc.disable()


@pytest.fixture(autouse=True)
def _collect_garbage_on_the_main_thread() -> Iterator[None]:
    yield
    gc.collect()
