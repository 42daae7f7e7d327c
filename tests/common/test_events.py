"""Domain events reach their subscribers after the emitting transaction commits, never
after a rollback, and one failing subscriber does not keep the others from theirs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from django.db import transaction

from apps.common import events
from apps.common.events import event_emit_on_commit, event_subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Happened:
    what: str


@pytest.fixture
def seen() -> Iterator[list[str]]:
    received: list[str] = []

    def record(event: Happened) -> None:
        received.append(event.what)

    event_subscribe(event_type=Happened, handler=record)
    event_subscribe(event_type=Happened, handler=record)  # a second ready(): no-op
    yield received
    events._handlers.pop(Happened)


def test_an_event_arrives_once_after_the_commit(seen: list[str]) -> None:
    with transaction.atomic():
        event_emit_on_commit(event=Happened("committed"))
        assert seen == []
    assert seen == ["committed"]


def test_an_event_of_a_rolled_back_write_never_arrives(seen: list[str]) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        event_emit_on_commit(event=Happened("rolled back"))
        raise RuntimeError("the write failed")
    assert seen == []


def test_a_failing_subscriber_does_not_stop_the_others(seen: list[str]) -> None:
    def broken(event: Happened) -> None:
        raise ValueError("broken subscriber")

    events._handlers[Happened].insert(0, broken)
    event_emit_on_commit(event=Happened("outside a transaction"))
    assert seen == ["outside a transaction"]


def test_provisioning_listens_to_fleet_changes() -> None:
    from apps.provisioning.tasks import reconcile_soon_on

    assert reconcile_soon_on in events._handlers[events.ServiceFleetChanged]
