"""Domain events: a lower app says what happened; a higher app reacts.

Layers run common < services < workers < provisioning, and an import only runs down.
When a lower app's write should make a higher app act (a worker became ready, so the
rollout may move on), the lower app emits an event and the higher one subscribes to it
in its `AppConfig.ready()`. Events are delivered after the emitting transaction commits
(`transaction.on_commit`), so a reaction never sees, nor acts on, a rolled-back write.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import transaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceFleetChanged:
    """Something the service's fleet follows changed (a deployment was made, a worker
    became ready or stopped): reconcile may act now, not at its next periodic pass."""

    service_id: int


E = TypeVar("E")
_handlers: dict[type[Any], list[Callable[[Any], None]]] = {}


def event_subscribe(*, event_type: type[E], handler: Callable[[E], None]) -> None:
    """Call `handler` with each `event_type` event emitted from now on; subscribing the
    same handler twice (a second `ready()`) is a no-op."""
    handlers = _handlers.setdefault(event_type, [])
    if handler not in handlers:
        handlers.append(handler)


def event_emit_on_commit(*, event: object) -> None:
    """Deliver `event` to its subscribers once the current transaction commits (at once
    outside one). A subscriber that fails is logged and the others still run: the emitting
    write has committed and must not be reported as failed."""
    transaction.on_commit(functools.partial(_deliver, event))


def _deliver(event: object) -> None:
    for handler in list(_handlers.get(type(event), ())):
        try:
            handler(event)
        except Exception:
            logger.exception("a subscriber of %s failed", type(event).__name__)
