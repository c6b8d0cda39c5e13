from django.apps import AppConfig


class VmsConfig(AppConfig):
    name = "vms"
    verbose_name = "Compute"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from isos.signals import iso_deleted
        from vms.services.iso_copies import on_iso_deleted

        # The ISO library may not import vms: it says when an ISO is gone, and its copies on hosts go too.
        iso_deleted.connect(on_iso_deleted, dispatch_uid="vms.iso_copies")
