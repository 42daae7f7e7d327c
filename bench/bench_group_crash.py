"""What a crashed worker costs each consumer group protocol, on the shared Kafka.

Two members of one group share a topic: a survivor polled here, and a worker in a process
of its own that is killed with SIGKILL (no LeaveGroup) once the group is stable, then
started again at once, as the local supervisor restarts a crashed worker. Each member uses
the worker's own group settings (worker_daemon/consumer.group_config). Measured: from the
kill until every partition is owned again, by whom, and what the restarted member saw.
`--static` gives the consumer protocol a group.instance.id too (classic always has one).

    eval "$(bash scripts/services env)"
    .venv/bin/python bench/bench_group_crash.py --protocol consumer [--static]
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from memrun.wire.kafka import kafka_client_config, kafka_connection_from_env  # noqa: E402
from worker_daemon.consumer import assign_as, group_config  # noqa: E402
from worker_daemon.settings import WorkerSettings  # noqa: E402

DEADLINE_S = 120.0


def member_config(group: str, name: str, protocol: str, static: bool) -> dict[str, Any]:
    settings = WorkerSettings(
        service="bench",
        package_path=REPO,
        worker_id=name,
        group_protocol=protocol,
        group_instance_id=name if static else "",
    )
    extra = {"group.id": group, "client.id": name, "enable.auto.commit": False}
    config = kafka_client_config(kafka_connection_from_env(), extra | group_config(settings))
    if static and protocol == "consumer":
        config["group.instance.id"] = name
    return config


class Owned:
    """The partitions one consumer owns, kept by its rebalance callbacks."""

    def __init__(self, say: Any = None) -> None:
        self.partitions: set[int] = set()
        self._say = say

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assign_as(consumer, partitions, paused=False)
        self.partitions |= {tp.partition for tp in partitions}
        self._report("assigned", partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.incremental_unassign(partitions)
        self.partitions -= {tp.partition for tp in partitions}
        self._report("revoked", partitions)

    on_lost = on_revoke

    def _report(self, what: str, partitions: list[TopicPartition]) -> None:
        if self._say is not None:
            self._say({what: sorted(tp.partition for tp in partitions), "t": time.time()})


def run_member(group: str, topic: str, name: str, protocol: str, static: bool) -> None:
    """The worker's side: report every change of ownership, one JSON line each."""

    def say(data: dict[str, Any]) -> None:
        print(json.dumps(data), flush=True)

    consumer = Consumer(
        member_config(group, name, protocol, static)
        | {"error_cb": lambda e: say({"error": str(e)})}
    )
    owned = Owned(say)
    consumer.subscribe(
        [topic], on_assign=owned.on_assign, on_revoke=owned.on_revoke, on_lost=owned.on_lost
    )
    while True:
        try:
            consumer.poll(0.1)
        except KafkaException as exc:
            say({"fatal": str(exc)})
            return


def start_member(
    args: argparse.Namespace, group: str, topic: str
) -> tuple[subprocess.Popen[str], queue.Queue[dict[str, Any]]]:
    argv = [
        sys.executable,
        __file__,
        "--member",
        "crashing",
        "--group",
        group,
        "--topic",
        topic,
        "--protocol",
        args.protocol,
    ]
    proc = subprocess.Popen(
        [*argv, *(["--static"] if args.static else [])], stdout=subprocess.PIPE, text=True
    )
    lines: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=["consumer", "classic"], default="consumer")
    parser.add_argument("--static", action="store_true")
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--member")
    parser.add_argument("--group")
    parser.add_argument("--topic")
    args = parser.parse_args()
    # A classic worker is always a static member (worker_daemon/settings.py).
    args.static = args.static or args.protocol == "classic"
    if args.member:
        run_member(args.group, args.topic, args.member, args.protocol, args.static)
        return

    connection = kafka_connection_from_env()
    admin = AdminClient(kafka_client_config(connection))
    topic = f"bench-crash-{uuid.uuid4().hex[:8]}"
    group = f"{topic}-group"
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(timeout=30)
    survivor = Consumer(member_config(group, "survivor", args.protocol, args.static))
    owned = Owned()
    survivor.subscribe(
        [topic], on_assign=owned.on_assign, on_revoke=owned.on_revoke, on_lost=owned.on_lost
    )
    proc, lines = start_member(args, group, topic)
    theirs: set[int] = set()
    events: list[dict[str, Any]] = []

    def pump(deadline: float, done: Any) -> bool:
        while time.monotonic() < deadline:
            survivor.poll(0.05)
            while not lines.empty():
                event = lines.get()
                events.append(event)
                theirs.update(event.get("assigned", []))
                theirs.difference_update(event.get("revoked", []))
            if done():
                return True
        return False

    try:
        stable = pump(
            time.monotonic() + DEADLINE_S,
            lambda: (
                len(theirs) == args.partitions // 2
                and len(owned.partitions) == args.partitions - len(theirs)
            ),
        )
        print(
            f"{args.protocol}{' static' if args.static else ''}: stable before the kill: {stable}, "
            f"the crashing member owns {len(theirs)} of {args.partitions}"
        )
        lost = set(theirs)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t_kill = time.time()
        proc, lines = start_member(args, group, topic)
        theirs.clear()
        events.clear()
        back = pump(time.monotonic() + DEADLINE_S, lambda: lost <= owned.partitions | theirs)
        t_back = time.time()
        print(
            f"  partitions of the killed member owned again: {back}, "
            f"{t_back - t_kill:.2f} s after the kill "
            f"(restarted member {len(theirs & lost)}, survivor {len(owned.partitions & lost)})"
        )
        for event in events:
            print(f"  restarted member +{event.pop('t', t_kill) - t_kill:.2f} s: {event}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        survivor.close()
        admin.delete_topics([topic])[topic].result(timeout=30)


if __name__ == "__main__":
    main()
