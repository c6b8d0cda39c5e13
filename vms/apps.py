from django.apps import AppConfig


class VmsConfig(AppConfig):
    name = "vms"
    verbose_name = "Compute"
    default_auto_field = "django.db.models.BigAutoField"
