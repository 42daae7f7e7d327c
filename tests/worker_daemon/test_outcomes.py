"""The outcome store: a batch of outcomes in one script call, first writer wins; a broken
connection is replaced."""

from __future__ import annotations

import uuid
from contextlib import suppress

import redis

from memrun.wire.protocol import done_channel, outcome_key, reply_key
from worker_daemon.outcomes import OutcomeStore


def test_a_batch_stores_each_new_outcome_once_and_wakes_only_its_first_callers(
    redis_client: redis.Redis,
) -> None:
    service = f"outcomes{uuid.uuid4().hex[:8]}"
    store = OutcomeStore(redis_client, service=service, reply_ttl_s=60)
    subscriber = redis_client.pubsub()
    subscriber.subscribe(done_channel(service))
    assert subscriber.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    try:
        assert store.exchange([], [("r1", b'{"n":1}')]) == ([], [True])
        existing, stored = store.exchange(
            ["r1", "r2"], [("r1", b'{"n":"again"}'), ("r2", b'{"n":2}'), ("r3", b'{"n":3}')]
        )
        assert existing == [True, False]  # checks see the state before the batch
        assert stored == [False, True, True]
        assert redis_client.get(outcome_key(service, "r1")) == b'{"n":1}'
        for request_id in ("r1", "r2", "r3"):
            assert redis_client.lrange(reply_key(service, request_id), 0, -1) == [b"1"]
            assert 0 < redis_client.ttl(reply_key(service, request_id)) <= 60
            assert 0 < redis_client.ttl(outcome_key(service, request_id)) <= 60
        published = []
        while (message := subscriber.get_message(timeout=1)) is not None:
            published.append(message["data"])
        assert published == [b'r1 {"n":1}', b'r2 {"n":2}', b'r3 {"n":3}']
        assert store.exchange(["r3", "r4"], []) == ([True, False], [])
    finally:
        store.close()
        subscriber.close()
        redis_client.delete(
            *(outcome_key(service, f"r{i}") for i in range(1, 4)),
            *(reply_key(service, f"r{i}") for i in range(1, 4)),
        )


def test_a_broken_connection_fails_one_round_trip_and_the_next_opens_another(
    redis_url: str, redis_client: redis.Redis
) -> None:
    service = f"outcomes{uuid.uuid4().hex[:8]}"
    name = f"outcomes-test-{uuid.uuid4().hex[:8]}"
    store = OutcomeStore(
        redis.Redis.from_url(redis_url, client_name=name), service=service, reply_ttl_s=60
    )
    try:
        assert store.exchange([], [("r1", b"{}")]) == ([], [True])
        killed = [c["id"] for c in redis_client.client_list() if c.get("name") == name]
        assert killed
        for client_id in killed:
            redis_client.client_kill_filter(_id=client_id)
        with suppress(redis.ConnectionError):
            store.exchange(["r1"], [])  # may see the closed socket
        assert store.exchange(["r1"], [("r2", b"{}")]) == ([True], [True])
    finally:
        store.close()
        redis_client.delete(*(outcome_key(service, f"r{i}") for i in (1, 2)))
        redis_client.delete(*(reply_key(service, f"r{i}") for i in (1, 2)))
