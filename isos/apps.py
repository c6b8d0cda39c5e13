from django.apps import AppConfig


class IsosConfig(AppConfig):
    name = "isos"
    verbose_name = "ISO library"
    default_auto_field = "django.db.models.BigAutoField"
