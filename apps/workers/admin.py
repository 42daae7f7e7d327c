"""Admin pages for workers: read-only, since provisioning and heartbeats own their state."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from apps.workers.models import Worker, WorkerEvent


class WorkerEventInline(admin.TabularInline):
    """The worker's state changes, oldest first."""

    model = WorkerEvent
    fields = ["at", "from_state", "to_state", "reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "service",
        "state",
        "deployment_version",
        "provider",
        "address",
        "last_heartbeat_at",
    ]
    list_filter = ["state", "provider", "service"]
    list_select_related = ["service", "deployment"]
    search_fields = ["name", "service__name", "address", "provider_ref"]
    exclude = ["credential_hash"]
    inlines = [WorkerEventInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False

    @admin.display(description="version", ordering="deployment__version")
    def deployment_version(self, obj: Worker) -> int | None:
        return obj.deployment.version if obj.deployment else None
