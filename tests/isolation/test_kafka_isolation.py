"""Kafka isolation, end to end: a hostile handler deployed as service A through the real
appliance path (the supervisor as `memrun up` runs it) uses its own worker's Kafka
credentials against service B: it joins B's group, consumes B's topic, produces to B's
topic, reads B's dead letters, creates a topic, grants itself an ACL and resets B's
password. The broker refuses each with an authorization error, B's requests all complete
with their true results, and A keeps serving.

Needs a broker with authentication (`scripts/services up` starts one; export what
`scripts/services env` prints); skipped on a PLAINTEXT broker, where there is nothing to
isolate with."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from memrun.wire.kafka import kafka_connection_from_env
from tests.provisioning import test_end_to_end as e2e
from tests.provisioning.test_confinement import answer, deploy_live, other_service
from tests.provisioning.test_end_to_end import Scenario

HOSTILE = Path(__file__).parent / "handlers" / "hostile_kafka.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not kafka_connection_from_env().authenticated,
        reason="the broker has no authentication (KAFKA_SECURITY_PROTOCOL unset)",
    ),
]
worker_grace_period_s, eager_celery, supervisor, scenario = (
    e2e.worker_grace_period_s,
    e2e.eager_celery,
    e2e.supervisor,
    e2e.scenario,
)

# What each attempt must get from the broker.
REFUSED = {
    "join_group": {"GROUP_AUTHORIZATION_FAILED"},
    "consume_topic": {"TOPIC_AUTHORIZATION_FAILED"},
    "read_dlq": {"TOPIC_AUTHORIZATION_FAILED"},
    "produce": {"TOPIC_AUTHORIZATION_FAILED"},
    "create_topic": {"TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"},
    "alter_acls": {"CLUSTER_AUTHORIZATION_FAILED"},
    "alter_credentials": {"CLUSTER_AUTHORIZATION_FAILED"},
}


@pytest.fixture
def victim(scenario: Scenario, service_name: Any) -> Scenario:
    """Service B, live with the echo handler, beside the scenario's service A."""
    bystander = other_service(scenario, service_name())
    deploy_live(bystander, "echo.py")
    return bystander


def test_a_hostile_handler_cannot_touch_another_services_kafka(
    scenario: Scenario, victim: Scenario, supervisor: subprocess.Popen[bytes]
) -> None:
    deploy_live(scenario, str(HOSTILE))
    submitted = victim.submit(range(0, 5))
    got = {}
    # One deployment for every attempt (booting workers is the slow part); each attempt is
    # a request of its own, and B keeps being invoked between them.
    for number, attack in enumerate(sorted(REFUSED)):
        result = answer(scenario, {"user": number, "attack": attack, "victim": victim.name})
        got[attack] = result["got"]
        submitted += victim.submit(range(5 * (number + 1), 5 * (number + 2)))

    assert {attack: code in REFUSED[attack] for attack, code in got.items()} == dict.fromkeys(
        REFUSED, True
    ), got
    outcomes = victim.outcomes(submitted)
    assert [o.ok for o in outcomes] == [True] * len(submitted)
    assert [o.result["user"] for o in outcomes] == list(range(len(submitted)))
    assert {o.result["version"] for o in outcomes} == {1}
    assert "worker" in answer(scenario, {"user": 100})
