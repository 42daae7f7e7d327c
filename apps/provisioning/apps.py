from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    name = "apps.provisioning"
    label = "provisioning"
    verbose_name = "Provisioning"

    def ready(self) -> None:
        # Provisioning sits above services and workers: they announce changes as
        # events rather than importing it (apps/common/events.py).
        from apps.common.events import ServiceFleetChanged, event_subscribe
        from apps.provisioning.tasks import reconcile_soon_on

        event_subscribe(event_type=ServiceFleetChanged, handler=reconcile_soon_on)
