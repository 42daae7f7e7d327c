"""`MemoryService`: what a user declares, and the decorators that register their handlers."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from memrun.errors import ConfigError
from memrun.wire.config import ServiceConfig, service_config_build, validate_service_name
from memrun.wire.sticky import StickyTemplate

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class HandlerSpec:
    fn: Callable[..., Any]
    is_async: bool


def _check_handler(fn: object, decorator: str, params: str) -> HandlerSpec:
    if not callable(fn):
        raise ConfigError(f"{decorator} decorates a function, got {fn!r}")
    try:
        signature = inspect.signature(fn)
        signature.bind(*params.split(", "))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{decorator}: {getattr(fn, '__name__', fn)!r} must take ({params}): {exc}"
        ) from None
    return HandlerSpec(fn=fn, is_async=inspect.iscoroutinefunction(fn))


class MemoryService:
    """A long-lived, warm, sticky service: its resources, its handler and its init hooks.

    memory and disk are sizes ("32Gi"); concurrency bounds the handlers running at once on
    one worker; timeout_seconds bounds one request; sticky_key (here or on @handler) names
    the payload fields whose values pick the partition, hence the worker; secrets names
    the secrets (`memrun secret set`) whose KEY=VALUE pairs its workers get as env vars.
    """

    def __init__(
        self,
        name: str,
        *,
        memory: str | int = "4Gi",
        disk: str | int = "50Gi",
        max_workers: int = 1,
        min_workers: int = 1,
        concurrency: int = 16,
        timeout_seconds: int = 300,
        sticky_key: str | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        # The signature spells the settings out for the user's editor; their defaults and
        # rules live once, in memrun.wire.config.
        self._config = service_config_build(
            name,
            memory=memory,
            disk=disk,
            max_workers=max_workers,
            min_workers=min_workers,
            concurrency=concurrency,
            timeout_seconds=timeout_seconds,
            sticky_key=sticky_key,
            secrets=secrets,
        )
        self.init_handlers: list[HandlerSpec] = []
        self.request_handler: HandlerSpec | None = None

    @property
    def name(self) -> str:
        return self._config.name

    def __repr__(self) -> str:
        return f"MemoryService({self.name!r})"

    def init_handler(self, fn: object = None, /) -> Callable[[F], F]:
        """Register `fn(ctx)` to run once per worker, before it takes traffic, in order."""
        if fn is not None:
            raise ConfigError("use @svc.init_handler(), with parentheses")

        def register(func: F) -> F:
            self.init_handlers.append(_check_handler(func, "@svc.init_handler()", "ctx"))
            return func

        return register

    def handler(self, fn: object = None, /, *, sticky_key: str | None = None) -> Callable[[F], F]:
        """Register `fn(ctx, request)`, the one request handler of this service."""
        if fn is not None:
            raise ConfigError("use @svc.handler(), with parentheses")
        if sticky_key is not None:
            template = str(StickyTemplate.parse(sticky_key))
            current = self._config.sticky_key
            if current is not None and current != template:
                raise ConfigError(
                    f"sticky_key is {current!r} on MemoryService but {template!r} on "
                    "@svc.handler(); give it in one place"
                )
            self._config = dataclasses.replace(self._config, sticky_key=template)

        def register(func: F) -> F:
            if self.request_handler is not None:
                raise ConfigError(
                    f"{self.name}: a service has exactly one @svc.handler(); "
                    f"{self.request_handler.fn.__name__!r} is already registered"
                )
            self.request_handler = _check_handler(func, "@svc.handler()", "ctx, request")
            return func

        return register

    def apply_config(self, config: ServiceConfig) -> None:
        """Adopt `config`, the deployed settings (the code's merged with the deploy's
        overrides, which win), keeping the registered handlers."""
        self._config = dataclasses.replace(config, name=validate_service_name(config.name))

    def config(self) -> ServiceConfig:
        return self._config
