"""The pages' forms: they parse and bound input; every rule beyond that is the services
layer's, which reports it as a DomainError shown beside the form."""

from __future__ import annotations

from typing import Any

from django import forms

from apps.common.permissions import Role
from apps.services.deployments import MESSAGE_MAX_CHARS


class DeployForm(forms.Form):
    """A deploy: the service, a message and optional overrides. The handler comes as the
    `package` file (taken by the upload handler, not by this form) or pasted as `source`."""

    service = forms.CharField(max_length=63, help_text="created on its first deploy")
    source = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 12}))
    message = forms.CharField(required=False, max_length=MESSAGE_MAX_CHARS)
    memory = forms.CharField(required=False, max_length=32, help_text="e.g. 4Gi")
    disk = forms.CharField(required=False, max_length=32, help_text="e.g. 50Gi")
    concurrency = forms.IntegerField(required=False, min_value=1, max_value=100_000)
    sticky_key = forms.CharField(required=False, max_length=200, help_text="e.g. user_id")
    min_workers = forms.IntegerField(required=False, min_value=0, max_value=10_000)
    max_workers = forms.IntegerField(required=False, min_value=1, max_value=10_000)
    secrets = forms.CharField(
        required=False, max_length=2000, help_text="secret names, comma-separated"
    )
    provider = forms.ChoiceField(
        required=False,
        choices=[
            ("", "unchanged (local for a new service)"),
            ("local", "local"),
            ("hetzner", "hetzner"),
        ],
    )
    server_type = forms.CharField(
        required=False, max_length=32, help_text="e.g. cpx41 (Hetzner); empty: the cheapest fit"
    )
    location = forms.CharField(required=False, max_length=32, help_text="e.g. fsn1 (Hetzner)")

    OVERRIDES = ("memory", "disk", "concurrency", "sticky_key", "min_workers", "max_workers")

    def overrides(self) -> dict[str, Any]:
        """MemoryService arguments as `memrun deploy`'s flags give them (None: not given);
        the name is the service deployed to."""
        given: dict[str, Any] = {"name": self.cleaned_data["service"]}
        for key in self.OVERRIDES:
            value = self.cleaned_data.get(key)
            given[key] = None if value in (None, "") else value
        names = [n.strip() for n in self.cleaned_data.get("secrets", "").split(",") if n.strip()]
        given["secrets"] = names or None
        return given

    def fleet(self) -> dict[str, str]:
        """The machine choice given (empty: unchanged)."""
        return {
            key: self.cleaned_data.get(key) or "" for key in ("provider", "server_type", "location")
        }


class SecretForm(forms.Form):
    """A secret's name; its pairs come as repeated `key` and `value` fields (the values
    from password inputs), read by `pairs`."""

    name = forms.CharField(max_length=63)

    def pairs(self) -> dict[str, str]:
        """The rows with a key; a row without one is an unused row of the form."""
        keys = self.data.getlist("key")
        values = self.data.getlist("value")
        return {k.strip(): v for k, v in zip(keys, values, strict=False) if k.strip()}

    def key_rows(self, rows: int) -> list[str]:
        """The keys typed (kept when the form is refused), padded with empty rows."""
        typed = [k for k in self.data.getlist("key") if k.strip()] if self.is_bound else []
        return typed + [""] * max(rows - len(typed), 1)


class RollbackForm(forms.Form):
    version = forms.IntegerField(min_value=1)


class ScaleForm(forms.Form):
    workers = forms.IntegerField(min_value=0, max_value=10_000)


class AutoscaleForm(forms.Form):
    """The whole policy at once (the page shows the current values); unticked is off."""

    enabled = forms.BooleanField(required=False)
    min_workers = forms.IntegerField(min_value=0, max_value=10_000)
    max_workers = forms.IntegerField(min_value=1, max_value=10_000)
    lag_per_worker = forms.IntegerField(min_value=1, max_value=2**31 - 1)
    # Blank: time in queue is not a trigger (the service says what range it takes).
    max_queue_seconds = forms.FloatField(required=False, max_value=7 * 24 * 3600)
    scale_up_window_s = forms.FloatField(min_value=0, max_value=7 * 24 * 3600)
    scale_down_window_s = forms.FloatField(min_value=0, max_value=7 * 24 * 3600)
    scale_up_cooldown_s = forms.FloatField(min_value=0, max_value=7 * 24 * 3600)
    scale_down_cooldown_s = forms.FloatField(min_value=0, max_value=7 * 24 * 3600)


class TokenForm(forms.Form):
    """A token's name and, optionally, its one grant: a role on a service, or on all
    services when the service is blank. Without a role, the token gets the user's grants."""

    ROLES = [("", "all my grants"), *((role.value, role.value) for role in Role)]

    name = forms.CharField(max_length=100)
    role = forms.ChoiceField(required=False, choices=ROLES)
    service = forms.CharField(required=False, max_length=63)


class DiffForm(forms.Form):
    a = forms.IntegerField(min_value=1)
    b = forms.IntegerField(min_value=1)


class LogFilterForm(forms.Form):
    LEVELS = [("", "any level"), ("info", "info+"), ("warning", "warning+"), ("error", "error+")]

    level = forms.ChoiceField(required=False, choices=LEVELS)
    request_id = forms.CharField(required=False, max_length=100)
    text = forms.CharField(required=False, max_length=200)
    until = forms.CharField(required=False, max_length=40)
    since = forms.CharField(required=False, max_length=80)
