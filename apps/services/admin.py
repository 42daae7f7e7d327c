"""Admin pages for services, deployments and API tokens.

A service added here is made by `service_create`, like the API's, which creates its
Kafka topics and can refuse (a broker down, a name taken): the refusal shows on the form.
Changes made here go through `service_update`, like the API's.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.common.errors import DomainError
from apps.services.models import ApiToken, DeadLetterReplay, Deployment, Service
from apps.services.services import (
    SERVICE_UPDATABLE,
    apitoken_revoke,
    service_create,
    service_update,
)
from memrun.errors import ConfigError
from memrun.wire.sizes import format_size, parse_size


class ServiceChangeForm(forms.ModelForm):
    """Memory and disk as sizes ("32Gi"), like everywhere else a user writes them."""

    memory = forms.CharField(help_text="e.g. 512Mi, 32Gi")
    disk = forms.CharField(help_text="e.g. 50Gi, 600Gi")

    class Meta:
        model = Service
        fields = [
            "min_workers",
            "desired_workers",
            "max_workers",
            "concurrency",
            "timeout_seconds",
            "sticky_key",
            "provider",
            "server_type",
            "location",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["memory"] = format_size(self.instance.memory_bytes)
            self.initial["disk"] = format_size(self.instance.disk_bytes)

    def _size(self, field: str) -> str:
        value: str = self.cleaned_data[field]
        try:
            setattr(self.instance, f"{field}_bytes", parse_size(value, field=field))
        except ConfigError as exc:
            raise forms.ValidationError(exc.message) from None
        return value

    def clean_memory(self) -> str:
        return self._size("memory")

    def clean_disk(self) -> str:
        return self._size("disk")


SERVICE_ADD_FIELDS = [
    "name",
    "min_workers",
    "max_workers",
    "concurrency",
    "timeout_seconds",
    "sticky_key",
    "partitions",
    "provider",
    "server_type",
    "location",
]


class ServiceAddForm(forms.ModelForm):
    """A new service, made through `service_create` once the fields validate."""

    memory = forms.CharField(initial="4Gi", help_text="e.g. 512Mi, 32Gi")
    disk = forms.CharField(initial="50Gi", help_text="e.g. 50Gi, 600Gi")

    class Meta:
        model = Service
        fields = SERVICE_ADD_FIELDS

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        data = {field: self.cleaned_data[field] for field in SERVICE_ADD_FIELDS}
        try:
            self.instance = service_create(
                **data, memory=self.cleaned_data["memory"], disk=self.cleaned_data["disk"]
            )
        except DomainError as exc:
            fields = exc.details.get("fields", {})
            for field, problems in fields.items():
                self.add_error(field if field in self.fields else None, problems)
            if not fields:
                self.add_error(None, exc.message)


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    form = ServiceChangeForm
    add_form = ServiceAddForm
    list_display = [
        "name",
        "memory",
        "disk",
        "workers",
        "concurrency",
        "timeout_seconds",
        "sticky_key",
        "partitions",
        "provider",
        "updated_at",
    ]
    list_filter = ["provider", "created_at"]
    search_fields = ["name", "sticky_key"]
    readonly_fields = [
        "name",
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

    @admin.display(description="workers (min / desired / max)")
    def workers(self, obj: Service) -> str:
        return f"{obj.min_workers} / {obj.desired_workers} / {obj.max_workers}"

    def save_model(self, request: HttpRequest, obj: Service, form: Any, change: bool) -> None:
        if not change:
            return  # ServiceAddForm made it through service_create
        data = {field: form.cleaned_data[field] for field in SERVICE_UPDATABLE}
        try:
            service_update(service=obj, data=data)
        except DomainError as exc:  # only a race can get here: the form validated the same
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
