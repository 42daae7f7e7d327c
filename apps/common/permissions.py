"""Who may change what: one rule for the API and the web pages alike."""

from __future__ import annotations

from typing import Any

from apps.common.errors import DomainError


def staff_require(*, user: Any, action: str) -> None:
    """DomainError 403 unless `user` is a staff user. `None` is memrun itself (reconcile,
    tests, management commands), which may do anything."""
    if user is None or getattr(user, "is_staff", False):
        return
    name = getattr(user, "username", "this user")
    raise DomainError(
        f"only staff users can {action}; ask an administrator to tick 'Staff status' for "
        f"{name} in /admin/auth/user/",
        status=403,
        details={"action": action},
    )
