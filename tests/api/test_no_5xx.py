"""Schemathesis over every route of /api/v1/openapi.json against a live server: no input,
valid or not, may give a 5xx. Each operation is fuzzed with valid and with invalid
input, each twice: with random path parameters (mostly 404s), and with them pinned to a
real service, deployment and worker, so that bodies reach the code behind the 404."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

EXAMPLES_PER_MODE = 10
# An invoke or a poll may wait this long at most here, so that a valid `wait` does not
# hold the fuzzing for minutes; longer waits stay valid input for every other test.
MAX_WAIT_S = 0.2


@pytest.fixture
def live(
    live_server: Any,
    api_token: tuple[Any, str],
    service_factory: Callable[..., Any],
    deploy_settings: Callable[..., Any],
    settings: Any,
    tmp_path: Any,
) -> dict[str, Any]:
    """A deployed service with a registered worker, and the credentials to call as a
    user and as that worker. Rollouts the fuzzing starts run inline (Celery eager) with
    the local provisioner under tmp_path, where no supervisor starts anything."""
    from apps.workers.services import worker_create
    from memrun_site.celery import app

    settings.MEMRUN_HOME = tmp_path / "home"
    settings.MEMRUN_ARTIFACTS_URL = (tmp_path / "artifacts").as_uri()
    settings.MEMRUN_RECONCILE_ON_EVENTS = False
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    service = service_factory()
    deployment = deploy_settings(service, status="active", sticky_key="user", max_workers=2)
    worker, credential = worker_create(
        service=service, deployment=deployment, name=f"{service.name}-w"
    )
    yield {
        "url": live_server.url,
        "user": {"Authorization": f"Bearer {api_token[1]}"},
        "worker": {"Authorization": f"Bearer {credential}"},
        "pinned": {
            "name": service.name,
            "version": deployment.version,
            "deployment_id": deployment.pk,
        },
        "worker_name": worker.name,
    }
    app.conf.task_always_eager = eager


def _bounded_wait(case: Case) -> None:
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > MAX_WAIT_S:
        case.query["wait"] = MAX_WAIT_S


def _operations() -> list[str]:
    """Every operation of the API, as "METHOD /path", read from the app itself so that
    each gets a test (and a timeout) of its own; deletes last, so that they do not take
    away what the others are pinned to."""
    from memrun_site.api import api

    labels = [
        f"{method.upper()} {path}"
        for path, operations in api.get_openapi_schema()["paths"].items()
        for method in operations
    ]
    return sorted(labels, key=lambda label: label.startswith("DELETE"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("label", _operations())
def test_no_route_answers_a_5xx(live: dict[str, Any], label: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live['url']}/api/v1/openapi.json")
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    on_worker = operation.path.startswith("/api/v1/workers/{name}")
    # A worker's own calls (heartbeat, log shipping) take its credential.
    as_worker = on_worker and operation.method.upper() == "POST"
    headers = live["worker"] if as_worker else live["user"]
    pinned = {**live["pinned"], "name": live["worker_name"]} if on_worker else live["pinned"]
    failures: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for pin in (False, True):
            strategy = operation.as_strategy(generation_mode=mode)
            failures += _fuzz(strategy, live["url"], headers, pinned if pin else None)
    assert not failures, "\n".join(failures[:20])


def _fuzz(
    strategy: st.SearchStrategy[Case],
    base_url: str,
    headers: dict[str, str],
    pinned: dict[str, Any] | None,
) -> list[str]:
    found: list[str] = []

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        if pinned is not None and case.path_parameters:
            for key in case.path_parameters:
                if key in pinned:
                    case.path_parameters[key] = str(pinned[key])
        _bounded_wait(case)
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        if response.status_code >= 500:
            found.append(
                f"{case.method} {case.formatted_path} query={case.query} "
                f"body={getattr(case, 'body', None)!r:.300}: {response.status_code} "
                f"{response.text[:300]}"
            )

    # Unsatisfiable: nothing invalid to send (no parameters, no body); the positive run
    # covers the operation.
    with contextlib.suppress(Unsatisfiable):
        run()
    return found
