from django.apps import AppConfig


class VaporSiteConfig(AppConfig):
    name = "vaporsite"
    verbose_name = "Vapor"

    def ready(self) -> None:
        from vaporsite import checks  # noqa: F401  (registers the system checks)
