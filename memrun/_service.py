"""`MemoryService`: what a user declares, and the decorators that register their handlers."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from memrun._sizes import parse_size
from memrun._sticky import StickyTemplate
from memrun.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$")


def validate_service_name(name: object) -> str:
    """Service names become Kafka topics, group ids, folders and URLs: keep them plain."""
    if not isinstance(name, str) or not _NAME.match(name) or "--" in name:
        raise ConfigError(
            f"service name {name!r} is not valid: use 2-63 lowercase letters, digits and "
            "single '-', starting with a letter, e.g. 'matrix-qa'"
        )
    return name


def _positive_int(value: object, field: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be a whole number >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ServiceConfig:
    """A validated service definition, in plain units (bytes, seconds)."""

    name: str
    memory_bytes: int
    disk_bytes: int
    max_workers: int
    min_workers: int
    concurrency: int
    timeout_seconds: int
    sticky_key: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    the payload fields whose values pick the partition, hence the worker.
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
    ) -> None:
        self.name = validate_service_name(name)
        self.memory_bytes = parse_size(memory, field="memory")
        self.disk_bytes = parse_size(disk, field="disk")
        self.max_workers = _positive_int(max_workers, "max_workers")
        self.min_workers = _positive_int(min_workers, "min_workers", minimum=0)
        if self.min_workers > self.max_workers:
            raise ConfigError(
                f"min_workers ({min_workers}) cannot exceed max_workers ({max_workers})"
            )
        self.concurrency = _positive_int(concurrency, "concurrency")
        self.timeout_seconds = _positive_int(timeout_seconds, "timeout_seconds")
        self.sticky_key = str(StickyTemplate.parse(sticky_key)) if sticky_key else None
        self.init_handlers: list[HandlerSpec] = []
        self.request_handler: HandlerSpec | None = None

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
            if self.sticky_key is not None and self.sticky_key != template:
                raise ConfigError(
                    f"sticky_key is {self.sticky_key!r} on MemoryService but {template!r} on "
                    "@svc.handler(); give it in one place"
                )
            self.sticky_key = template

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
        """Adopt `config`, the deployed settings (the code's merged with `memrun deploy`'s
        flags, which win), keeping the registered handlers."""
        self.name = validate_service_name(config.name)
        self.memory_bytes = config.memory_bytes
        self.disk_bytes = config.disk_bytes
        self.max_workers = config.max_workers
        self.min_workers = config.min_workers
        self.concurrency = config.concurrency
        self.timeout_seconds = config.timeout_seconds
        self.sticky_key = config.sticky_key

    def config(self) -> ServiceConfig:
        return ServiceConfig(
            name=self.name,
            memory_bytes=self.memory_bytes,
            disk_bytes=self.disk_bytes,
            max_workers=self.max_workers,
            min_workers=self.min_workers,
            concurrency=self.concurrency,
            timeout_seconds=self.timeout_seconds,
            sticky_key=self.sticky_key,
        )
