"""The worker's reading of its group's committed offsets (worker_daemon/lag.CommittedReader),
on real Kafka: a consumer of the group that never subscribes, on its own thread, instead of
the admin client whose coordinator-retry path crashes the process (worker_daemon/lag.py)."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from tests.fixtures.services import kafka_test_config
from tests.worker_daemon.harness import wait_for
from worker_daemon.lag import CommittedReader

TP = tuple[str, int]


def _group_consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        kafka_test_config(
            bootstrap, {"group.id": group, "enable.auto.commit": False, "log_level": 2}
        )
    )


def _commit(bootstrap: str, group: str, offsets: dict[TP, int]) -> None:
    consumer = _group_consumer(bootstrap, group)
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False,
        )
    finally:
        consumer.close()


def _collect(reader: CommittedReader, want: dict[TP, int]) -> Callable[[], bool]:
    """A condition that accumulates the reader's answers until they equal `want`."""
    seen: dict[TP, int] = {}

    def done() -> bool:
        seen.update(reader.latest())
        return seen == want

    return done


def test_reads_the_groups_commits_and_follows_them(
    kafka_bootstrap: str, kafka_topic_factory: Callable[..., str], unique_name: str
) -> None:
    topic = kafka_topic_factory(3)
    group = f"memrun-test-committed-{unique_name}"
    made: list[Consumer] = []

    def make() -> Consumer:
        made.append(_group_consumer(kafka_bootstrap, group))
        return made[-1]

    reader = CommittedReader(make)
    partitions = [(topic, 0), (topic, 1), (topic, 2)]
    try:
        # A group that has never committed (its coordinator may not even be loaded yet:
        # the answer the admin path crashed on) reads as -1 everywhere.
        reader.ask(partitions)
        wait_for(
            _collect(reader, {tp: -1 for tp in partitions}),
            what="-1 for a group with no commits",
        )
        _commit(kafka_bootstrap, group, {(topic, 0): 5, (topic, 1): 7})
        reader.ask(partitions)
        wait_for(
            _collect(reader, {(topic, 0): 5, (topic, 1): 7, (topic, 2): -1}),
            what="the commits made since",
        )
        _commit(kafka_bootstrap, group, {(topic, 0): 9})
        reader.ask([(topic, 0)])
        wait_for(_collect(reader, {(topic, 0): 9}), what="a newer commit")
    finally:
        reader.close()
    assert len(made) == 1  # one consumer for every round, made on the reader's thread
    assert reader._thread is not None and not reader._thread.is_alive()
    reader.ask(partitions)  # after close: ignored, no thread started again
    assert reader._thread is not None and not reader._thread.is_alive()
    assert reader.latest() == {}


def test_close_without_a_question_starts_nothing() -> None:
    def never() -> Consumer:
        raise AssertionError("no consumer is made before the first question")

    reader = CommittedReader(never)
    reader.close()
    reader.ask([("t", 0)])
    assert reader._thread is None
