"""Admin pages for services, deployments and API tokens.

A service added here is made by `service_create`, like the API's, which creates its
Kafka topics and can refuse (a broker down, a name taken): the refusal shows on the form.
Changes made here go through `service_update`, like the API's; settings are shown, not
edited (they come with a deployment).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.common.errors import DomainError
from apps.services.models import (
    ApiToken,
    ApiTokenGrant,
    DeadLetterReplay,
    Deployment,
    Secret,
    Service,
    UserGrant,
)
from apps.services.selectors import secret_usage, service_list
from apps.services.services import (
    SERVICE_UPDATABLE,
    desired_workers_check,
    service_create,
    service_update,
)
from apps.services.tokens import apitoken_revoke, usergrant_add, usergrant_delete
from memrun.wire.config import SETTINGS, Setting
from memrun.wire.sizes import format_size


def _setting_column(setting: Setting) -> Callable[[Service], str]:
    """An admin column showing `setting` of a service's live deployment."""

    def show(obj: Service) -> str:
        config = obj.config
        return "-" if config is None else setting.show(getattr(config, setting.field))

    show.short_description = setting.arg  # type: ignore[attr-defined]
    return show


class ServiceChangeForm(forms.ModelForm):
    """The fleet, with the desired worker count checked against the live settings."""

    class Meta:
        model = Service
        fields = sorted(SERVICE_UPDATABLE)

    def clean_desired_workers(self) -> int:
        workers: int = self.cleaned_data["desired_workers"]
        try:
            desired_workers_check(service=self.instance, workers=workers)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None
        return workers


# A service before its first deployment: identity and fleet (its settings come with
# its code, by deploying).
SERVICE_ADD_FIELDS = [
    "name",
    "partitions",
    "desired_workers",
    "provider",
    "server_type",
    "location",
]


class ServiceAddForm(forms.ModelForm):
    """A new service, made through `service_create` once the fields validate."""

    class Meta:
        model = Service
        fields = SERVICE_ADD_FIELDS

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        data = {field: self.cleaned_data[field] for field in SERVICE_ADD_FIELDS}
        try:
            self.instance = service_create(**data)
        except DomainError as exc:
            fields = exc.details.get("fields", {})
            for field, problems in fields.items():
                self.add_error(field if field in self.fields else None, problems)
            if not fields:
                self.add_error(None, exc.message)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    """The fleet is edited here; the settings are shown, from the live deployment, and
    change by deploying (or PATCH /api/v1/services/{name}, which deploys)."""

    form = ServiceChangeForm
    add_form = ServiceAddForm
    fields = ["desired_workers", "provider", "server_type", "location"]
    list_display = [
        "name",
        "version",
        *(_setting_column(setting) for setting in SETTINGS),
        "desired_workers",
        "partitions",
        "provider",
        "updated_at",
    ]
    list_filter = ["provider", "created_at"]
    search_fields = ["name"]
    readonly_fields = [
        "name",
        "version",
        "settings",
        "partitions",
        "request_topic",
        "dlq_topic",
        "created_at",
        "updated_at",
    ]

    def get_form(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ["request_topic", "dlq_topic"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Service]:
        return service_list()

    def get_fields(self, request: HttpRequest, obj: Service | None = None) -> list[str]:
        if obj is None:
            return SERVICE_ADD_FIELDS
        return [*self.readonly_fields[:3], *self.fields, *self.readonly_fields[3:]]

    @admin.display(description="live version")
    def version(self, obj: Service) -> str:
        live = obj.live_deployment
        return "-" if live is None else f"v{live.version}"

    @admin.display(description="settings (of the live deployment)")
    def settings(self, obj: Service) -> str:
        config = obj.config
        if config is None:
            return "none yet: deploy the service"
        return ", ".join(f"{s.arg}={s.show(getattr(config, s.field))}" for s in SETTINGS)

    def save_model(self, request: HttpRequest, obj: Service, form: Any, change: bool) -> None:
        if not change:
            return  # ServiceAddForm made it through service_create
        data = {field: form.cleaned_data[field] for field in SERVICE_UPDATABLE}
        try:
            service_update(service=obj, data=data)
        except DomainError as exc:  # only a race can get here: the form checked the same
            self.message_user(request, exc.message, messages.ERROR)


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["service", "version", "status", "degraded", "size", "created_by", "created_at"]
    list_filter = ["status", "service", "created_at"]
    list_select_related = ["service", "created_by"]
    search_fields = ["service__name", "sha256", "message"]
    readonly_fields = [
        "service",
        "version",
        "sha256",
        "size_bytes",
        "manifest",
        "artifact_url",
        "message",
        "status",
        "failure_reason",
        # Reconcile's crash-loop state: shown, never edited by hand.
        "degraded_reason",
        "degraded_at",
        "crash_backoff_until",
        "created_by",
        "created_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj: Deployment) -> str:
        return format_size(obj.size_bytes)

    @admin.display(description="degraded", boolean=True)
    def degraded(self, obj: Deployment) -> bool:
        return obj.degraded


class ApiTokenGrantInline(admin.TabularInline):
    """A token's grants, fixed at its creation: shown, never edited."""

    model = ApiTokenGrant
    fields = ["role", "service"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UserGrant)
class UserGrantAdmin(admin.ModelAdmin):
    """What a user without staff status may do (and the most its tokens may). Added and
    deleted through `usergrant_add` / `usergrant_delete`, so every web process forgets the
    user's cached tokens at once."""

    list_display = ["user", "role", "service"]
    list_filter = ["role"]
    list_select_related = ["user", "service"]
    search_fields = ["user__username", "service__name"]
    fields = ["user", "role", "service"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: UserGrant, form: Any, change: bool) -> None:
        try:
            saved = usergrant_add(user=obj.user, role=obj.role, service=obj.service)
        except DomainError as exc:
            raise forms.ValidationError(exc.message) from None
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: UserGrant) -> None:
        usergrant_delete(grant=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UserGrant]) -> None:
        for grant in queryset:
            usergrant_delete(grant=grant)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "prefix", "created_at", "last_used_at", "active"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "created_at"]
    list_select_related = ["user"]
    search_fields = ["name", "prefix", "user__username"]
    readonly_fields = [
        "user",
        "name",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    exclude = ["token_hash"]
    actions = ["revoke"]
    inlines = [ApiTokenGrantInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(boolean=True, description="active", ordering="revoked_at")
    def active(self, obj: ApiToken) -> bool:
        return obj.is_active

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            apitoken_revoke(token=token)
        self.message_user(request, f"revoked {queryset.count()} token(s)", messages.SUCCESS)


@admin.register(DeadLetterReplay)
class DeadLetterReplayAdmin(admin.ModelAdmin):
    """Replays are made from the API, the CLI or the UI (they produce to Kafka); here
    they are only read."""

    list_display = ["service", "dead_letter_id", "request_id", "attempt", "actor", "at"]
    list_filter = ["at"]
    list_select_related = ["service"]
    search_fields = ["service__name", "dead_letter_id", "original_request_id", "request_id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Secret)
class SecretAdmin(admin.ModelAdmin):
    """Secrets are shown, never their values (not even encrypted), and changed through
    `memrun secret`, the API or /secrets/, whose rules (reserved keys, rolling the services
    that use one, refusing to delete one in use) live in apps/services/secretstore.py."""

    list_display = ("name", "key_names", "fingerprint", "used_by", "updated_at")
    fields = ("name", "key_names", "fingerprint", "used_by", "created_at", "updated_at")
    readonly_fields = fields
    search_fields = ("name",)

    @admin.display(description="keys")
    def key_names(self, obj: Secret) -> str:
        return ", ".join(obj.keys)

    @admin.display(description="used by")
    def used_by(self, obj: Secret) -> str:
        return ", ".join(secret_usage().get(obj.name, [])) or "-"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
