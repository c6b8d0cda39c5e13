from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """The admin index page: VMs, host capacity, the ISO library and recent failures at a glance.

    It only reads the other apps' models; no other app imports it.
    """

    name = "dashboard"
    verbose_name = "Dashboard"
