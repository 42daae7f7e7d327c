from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    name = "apps.provisioning"
    label = "provisioning"
    verbose_name = "Provisioning"

    def ready(self) -> None:
        # Provisioning sits above services and workers: they announce changes as
        # events rather than importing it (apps/common/events.py).
        from apps.common.events import ServiceFleetChanged, event_subscribe
        from apps.common.fleet import fleet_check_register
        from apps.provisioning.provisioners.hetzner import hetzner_fleet_check
        from apps.provisioning.tasks import reconcile_soon_on

        event_subscribe(event_type=ServiceFleetChanged, handler=reconcile_soon_on)
        fleet_check_register(check=hetzner_fleet_check)
