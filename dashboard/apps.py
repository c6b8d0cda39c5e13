from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class DashboardConfig(AppConfig):
    """The admin index page: VMs, host capacity, the ISO library and recent failures at a glance.

    It only reads the other apps' models; no other app imports it.
    """

    name = "dashboard"
    verbose_name = "Dashboard"


class VaporAdminConfig(AdminConfig):
    """django.contrib.admin with Vapor's site (dashboard.sites.VaporAdminSite) as `admin.site`."""

    default_site = "dashboard.sites.VaporAdminSite"
