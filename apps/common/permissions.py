"""Who may do what: roles, grants, and one check for the API, the fast lane and the pages.

A grant is a role on one service or on all of them. What each role allows:

| role   | allows                                                                        |
|--------|-------------------------------------------------------------------------------|
| invoke | invoke and invoke-batch; polling the requests this same caller submitted      |
| read   | GET of the service, its deployments and packages, workers, logs, dead letters |
|        | and its requests' outcomes (whoever submitted them); on all: metrics         |
| deploy | read + invoke + upload a deployment, roll back, PATCH settings, scale, replay |
|        | dead letters (attaching a secret the service does not have yet: admin on all) |
| admin  | deploy + delete the service; on all: everything, incl. creating services,     |
|        | tokens for others, garbage collection and secrets                             |

A staff user holds admin on all. Any other user holds only its own grants. A token holds
its own grants capped by its user's (`Access.ceiling`), so a token never does more than
its user can, even after the user's grants shrink. Managing one's own tokens with a
bearer token needs the admin role somewhere; a browser session always may.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from apps.common.errors import DomainError

ANY_SERVICE = "any service"


class Role(enum.StrEnum):
    INVOKE = "invoke"
    READ = "read"
    DEPLOY = "deploy"
    ADMIN = "admin"


# role held -> the roles it satisfies.
_INCLUDES: dict[Role, frozenset[Role]] = {
    Role.INVOKE: frozenset({Role.INVOKE}),
    Role.READ: frozenset({Role.READ}),
    Role.DEPLOY: frozenset({Role.DEPLOY, Role.READ, Role.INVOKE}),
    Role.ADMIN: frozenset(Role),
}


def role_parse(value: str) -> Role:
    """`value` as a Role; 422 naming the roles otherwise."""
    try:
        return Role(value)
    except ValueError:
        raise DomainError(
            f"no role {value!r}; roles are {', '.join(Role)}",
            status=422,
            details={"fields": {"role": [f"one of {', '.join(Role)}"]}},
        ) from None


@dataclass(frozen=True, order=True)
class Grant:
    """`role` on the service `service`, or on every service when it is None."""

    service: str | None
    role: Role

    def covers(self, role: Role, service: str | None) -> bool:
        """Whether this grant satisfies `role` on `service` (None: on all services)."""
        if role not in _INCLUDES[self.role]:
            return False
        return self.service is None or self.service == service

    def __str__(self) -> str:
        return f"{self.role} on {self.service or 'all services'}"


@dataclass(frozen=True)
class Access:
    """What one caller may do. `who` names it in refusals ("token ci of alice")."""

    who: str
    grants: frozenset[Grant]
    ceiling: Access | None = None

    def allows(self, role: Role, service: str | None = None) -> bool:
        """`role` on `service`; None asks for `role` on all services."""
        own = any(grant.covers(role, service) for grant in self.grants)
        return own and (self.ceiling is None or self.ceiling.allows(role, service))

    def allows_any(self, role: Role) -> bool:
        """`role` on at least one service."""
        return any(self.allows(role, grant.service) for grant in self.grants)

    def services_with(self, role: Role) -> frozenset[str] | None:
        """The services on which it holds `role`; None when it holds it on all."""
        if self.allows(role):
            return None
        return frozenset(
            g.service for g in self.grants if g.service and self.allows(role, g.service)
        )

    def require(self, role: Role, service: str | None = None, *, what: str = "") -> None:
        """DomainError 403 naming the missing role unless `allows(role, service)`."""
        if self.allows(role, service):
            return
        raise permission_denied(self, role, service, what=what)

    def require_any(self, role: Role, *, what: str = "") -> None:
        if not self.allows_any(role):
            raise permission_denied(self, role, ANY_SERVICE, what=what)

    def covers_all(self, grants: Iterable[Grant]) -> bool:
        """Whether every grant of `grants` is within this access (for new tokens)."""
        return all(self.allows(grant.role, grant.service) for grant in grants)


def permission_denied(
    access: Access, role: Role, service: str | None, *, what: str = ""
) -> DomainError:
    where = "all services" if service is None else service
    action = f" to {what}" if what else ""
    flags = f"--role {role}" + (
        f" --service {service}" if service and service != ANY_SERVICE else ""
    )
    return DomainError(
        f"{access.who} needs the {role} role on {where}{action}. Staff users hold every "
        "role; an administrator grants roles to other users, who make tokens with them "
        f"(memrun token create --name NAME {flags})",
        status=403,
        details={"role": str(role), "service": service},
    )


# memrun itself (reconcile, management commands, tests calling services directly).
SYSTEM = Access(who="memrun", grants=frozenset({Grant(None, Role.ADMIN)}))
