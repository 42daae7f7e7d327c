"""What the consumer group protocol guarantees a scale-up, on real Kafka: 4 -> 5 members
moves only the new member's share of the partitions, each from one old owner that gave it
up before the new one took it, and the survivors keep (and never give up) the rest.

The members are consumers with the worker's own group settings (consumer.group_config)
and rebalance calls (assign_as, incremental_unassign), polled round-robin on this thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from memrun.wire.protocol import consumer_group
from tests.fixtures.services import kafka_test_config
from tests.worker_daemon.conftest import ServiceUnderTest
from tests.worker_daemon.harness import wait_for
from worker_daemon.consumer import assign_as, group_config
from worker_daemon.settings import WorkerSettings

PARTITIONS = 64


@dataclass
class Member:
    name: str
    consumer: Consumer
    owned: set[int] = field(default_factory=set)
    # (monotonic time, partition) of each callback, in order.
    assigned: list[tuple[float, int]] = field(default_factory=list)
    revoked: list[tuple[float, int]] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assign_as(consumer, partitions, paused=False)
        now = time.monotonic()
        for tp in partitions:
            self.owned.add(tp.partition)
            self.assigned.append((now, tp.partition))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_unassign(partitions)
        now = time.monotonic()
        for tp in partitions:
            self.owned.discard(tp.partition)
            self.revoked.append((now, tp.partition))

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_unassign(partitions)
        for tp in partitions:
            self.owned.discard(tp.partition)
            self.lost.append(tp.partition)


def join(service: ServiceUnderTest, name: str, protocol: str, tmp: Path) -> Member:
    settings = WorkerSettings(
        service=service.name, package_path=tmp, worker_id=name, group_protocol=protocol
    )
    consumer = Consumer(
        kafka_test_config(
            service.bootstrap,
            {
                "group.id": consumer_group(service.name),
                "client.id": f"memrun-worker-{name}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **group_config(settings),
            },
        )
    )
    member = Member(name, consumer)
    consumer.subscribe(
        [service.topic],
        on_assign=member.on_assign,
        on_revoke=member.on_revoke,
        on_lost=member.on_lost,
    )
    return member


def settled(admin: AdminClient, service: ServiceUnderTest, members: list[Member]) -> bool:
    """Every member polled once; true when they own all partitions between them, each
    once, the share of each is even, and the broker calls the group stable."""
    for member in members:
        member.consumer.poll(0.05)
    shares = [len(m.owned) for m in members]
    owned = set().union(*(m.owned for m in members))
    if sum(shares) != PARTITIONS or len(owned) != PARTITIONS:
        return False
    if max(shares) - min(shares) > 1:
        return False
    group = consumer_group(service.name)
    description = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return str(description.state.name) == "STABLE"


@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_a_scale_up_moves_only_the_new_members_share_and_survivors_keep_the_rest(
    service_factory: Callable[..., ServiceUnderTest],
    kafka_admin: AdminClient,
    tmp_path: Path,
    protocol: str,
) -> None:
    service = service_factory(partitions=PARTITIONS)
    members = [join(service, f"{service.name}-w{i}", protocol, tmp_path) for i in range(4)]
    try:
        wait_for(
            lambda: settled(kafka_admin, service, members),
            timeout_s=90,
            what="4 members sharing 64 partitions",
        )
        before = {m.name: set(m.owned) for m in members}
        t_scale = time.monotonic()
        newcomer = join(service, f"{service.name}-w4", protocol, tmp_path)
        members.append(newcomer)
        wait_for(
            lambda: settled(kafka_admin, service, members),
            timeout_s=90,
            what="5 members sharing 64 partitions",
        )

        gained = newcomer.owned
        # The minimum: the new member's even share (64 / 5), every one of it from an old
        # owner, and nothing moved between the survivors.
        assert len(gained) in (12, 13), sorted(gained)
        given_up_at: dict[int, float] = {}
        for survivor in members[:4]:
            kept = before[survivor.name] & survivor.owned
            assert survivor.owned == kept, f"{survivor.name} gained a partition"
            revoked_now = [(t, p) for t, p in survivor.revoked if t >= t_scale]
            assert {p for _, p in revoked_now} == before[survivor.name] - kept
            assert not {p for _, p in revoked_now} & survivor.owned, "a kept one was revoked"
            assert not [p for t, p in survivor.assigned if t >= t_scale]
            assert not survivor.lost
            given_up_at.update({p: t for t, p in revoked_now})
        assert set(given_up_at) == gained
        # Never two owners at once: each partition reached the newcomer after its old
        # owner had let it go (both callbacks ran on this thread, in this order).
        for taken_at, partition in newcomer.assigned:
            assert given_up_at[partition] <= taken_at, partition
    finally:
        for member in members:
            member.consumer.close()


def test_each_protocol_gets_only_its_own_settings() -> None:
    """librdkafka refuses the classic group settings with KIP-848, and a KIP-848 static
    member never leaves for good (group_config): so the worker id is no instance id there."""
    env = {"MEMRUN_SERVICE": "svc", "MEMRUN_PACKAGE_PATH": "/p", "MEMRUN_WORKER_ID": "w-1"}
    kip848 = WorkerSettings.from_env({**env, "MEMRUN_GROUP_PROTOCOL": "consumer"})
    assert group_config(kip848) == {"group.protocol": "consumer"}
    assert group_config(WorkerSettings.from_env(env)) == group_config(kip848)  # the default
    classic = WorkerSettings.from_env({**env, "MEMRUN_GROUP_PROTOCOL": "classic"})
    assert group_config(classic) == {
        "group.protocol": "classic",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 300,
        "group.instance.id": "w-1",
    }
