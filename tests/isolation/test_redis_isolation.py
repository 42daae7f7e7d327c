"""A service's workers reach Redis only as their service's own ACL user (I8), end to end: a
hostile handler (handlers/hostile_redis.py), deployed as service A through the supervisor
as `memrun up` runs it, uses the Redis URL its worker was given against service B (an
honest service whose requests wait, in flight, until the test opens their gate), the
default user, Celery's keys and the server itself. Every attempt is refused, B's requests
all complete with their true results, and A keeps serving."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from apps.services import broker
from memrun.wire.protocol import outcome_key
from tests.provisioning import test_end_to_end as e2e
from tests.provisioning.test_end_to_end import Scenario
from tests.worker_daemon.harness import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
# The end-to-end tests' fixtures: a live appliance, and the supervisor as `memrun up` runs it.
worker_grace_period_s, eager_celery, supervisor, scenario = (
    e2e.worker_grace_period_s,
    e2e.eager_celery,
    e2e.supervisor,
    e2e.scenario,
)

HANDLERS = Path(__file__).parent / "handlers"
AGAINST_B = [
    "read_outcome",
    "exists_outcome",
    "forge_set",
    "forge_script",
    "forge_evalsha",
    "forge_undeclared",
    "publish_victim",
    "subscribe_victim",
    "psubscribe_all",
]
AGAINST_THE_APPLIANCE = [
    "publish_invalidate",
    "subscribe_invalidate",
    "celery_push",
    "celery_read",
    "kombu_bindings",
    "select",
    "flushall",
    "flushdb",
    "config_get",
    "keys",
    "scan",
    "acl_list",
    "client_list",
    "script_flush",
]


def refused(answer: str) -> bool:
    """NOPERM (redis-py's NoPermissionError), or what a script's call gets for a key
    outside its caller's patterns."""
    return answer.startswith("NoPermissionError: ") or (
        "user executing the script can't access" in answer
    )


def deploy_live(service: Scenario, handler: str) -> str:
    deployment = service.deploy(HANDLERS / handler)
    service.until(lambda: service.status(deployment) == "active", f"{handler} to be live")
    [worker] = service.workers("ready")
    return str(worker.name)


def attack(hostile: Scenario, attacks: list[str], **target: str) -> dict[str, str]:
    [outcome] = hostile.outcomes(
        [hostile.submit_payload({"user": 1, "attacks": attacks, **target}, sticky_template="user")]
    )
    assert outcome.ok, outcome
    tried: dict[str, str] = outcome.result["tried"]
    assert set(tried) == set(attacks)
    return tried


@pytest.fixture
def protected_redis(redis_url: str) -> str:
    """The Redis under test asks its default user for a password, as `scripts/services`
    starts it. The open Redis of an older set-up would make the default-user checks
    vacuous: there they fail in CI and are skipped elsewhere, saying why."""
    host = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs
    anonymous = redis.Redis(host=host["host"], port=host["port"], socket_timeout=5)
    try:
        anonymous.ping()
    except redis.AuthenticationError:
        return redis_url
    finally:
        anonymous.close()
    why = (
        "this Redis lets its default user in without a password; start one with "
        "`scripts/services up` (which sets one) and use `scripts/services env`"
    )
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def test_a_hostile_service_cannot_read_forge_or_overhear_another_services_outcomes(
    scenario: Scenario,
    supervisor: subprocess.Popen[bytes],
    service_name: Any,
    live_server: Any,
    api_token: tuple[Any, str],
) -> None:
    victim = Scenario(service_name(), scenario.home, scenario.tmp, scenario.redis, scenario.client)
    deploy_live(victim, "gated.py")
    hostile_worker = deploy_live(scenario, "hostile_redis.py")

    users = range(1, 6)
    ids = [victim.submit_payload({"user": u, "gated": True}, sticky_template="user") for u in users]
    # A caller waiting through the control plane, as `memrun invoke` does.
    waited: dict[str, Any] = {}

    def wait_through_the_api() -> None:
        waited["response"] = httpx.get(
            f"{live_server.url}/api/v1/requests/{ids[0]}?wait=120",
            headers={"Authorization": f"Bearer {api_token[1]}"},
            timeout=150,
        )

    caller = threading.Thread(target=wait_through_the_api)
    caller.start()
    wait_for(lambda: broker.listener.waiting() >= 1, what="the API caller to be waiting")
    assert not any(scenario.redis.exists(outcome_key(victim.name, i)) for i in ids)

    tried = attack(scenario, [*AGAINST_B, "publish_own"], victim=victim.name, request_id=ids[0])
    for name in AGAINST_B:
        assert refused(tried[name]), (name, tried[name])
    # Its own done channel is its to publish on; what it says there about B's request
    # wakes no caller of B.
    assert tried["publish_own"].startswith("ok: "), tried["publish_own"]
    assert not any(scenario.redis.exists(outcome_key(victim.name, i)) for i in ids)

    scenario.redis.set(f"memrun:{victim.name}:gate", "1")
    for user, outcome in zip(users, victim.outcomes(ids), strict=True):
        assert outcome.ok and outcome.result["true_answer"] == user * 7, outcome
        assert "forged" not in outcome.result and outcome.worker != "evil"
    caller.join(150)
    response = waited["response"]
    assert response.status_code == 200, response.text
    assert response.json()["result"]["true_answer"] == 7, response.json()

    # A keeps serving.
    assert attack(scenario, []) == {}
    assert scenario.workers("ready")[0].name == hostile_worker


def test_a_hostile_service_cannot_reach_celery_the_keyspace_or_the_servers_settings(
    scenario: Scenario, supervisor: subprocess.Popen[bytes]
) -> None:
    deploy_live(scenario, "hostile_redis.py")
    tried = attack(scenario, AGAINST_THE_APPLIANCE)
    for name in AGAINST_THE_APPLIANCE:
        assert refused(tried[name]), (name, tried[name])
    assert attack(scenario, []) == {}


def test_a_hostile_service_cannot_connect_as_the_default_user(
    protected_redis: str, scenario: Scenario, supervisor: subprocess.Popen[bytes]
) -> None:
    deploy_live(scenario, "hostile_redis.py")
    tried = attack(scenario, ["default_no_password", "default_guessed"])
    # NOAUTH: no command runs before AUTH; WRONGPASS for a guess.
    assert tried["default_no_password"].startswith("AuthenticationError: "), tried
    assert tried["default_guessed"] == (
        "AuthenticationError: invalid username-password pair or user is disabled."
    ), tried
    assert attack(scenario, []) == {}
