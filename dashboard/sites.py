"""Vapor's admin site: the operator's work first in every app list (the index, the side bar).

Django lists apps and models alphabetically, which put "Virtual machines" under
Tokens, Groups and Tasks. Here Compute (the `vms` app) comes first, then the ISO
library and projects; Django's own apps and the plumbing (users and groups,
API tokens, django-q2's tasks) come last. Inside an app, models named in
MODEL_ORDER come first in that order. "View site" leads to the dashboard
(this index): Vapor has no other site.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.urls import reverse_lazy

FIRST = ("vms", "isos", "projects")  # in this order
LAST = ("auth", "authtoken", "django_q")  # in this order, after everything else
MODEL_ORDER = {"vms": ("VirtualMachine", "VmTemplate"), "isos": ("IsoImage",)}


def app_rank(app_label: str) -> tuple[int, int]:
    """Sort key of an app: FIRST ones by position, then the others (kept in Django's order), then LAST."""
    if app_label in FIRST:
        return 0, FIRST.index(app_label)
    if app_label in LAST:
        return 2, LAST.index(app_label)
    return 1, 0


def _model_rank(app_label: str, object_name: str) -> int:
    order = MODEL_ORDER.get(app_label, ())
    return order.index(object_name) if object_name in order else len(order)


class VaporAdminSite(AdminSite):
    site_url = reverse_lazy("admin:index")  # type: ignore[assignment]

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        apps = super().get_app_list(request, app_label)
        apps.sort(key=lambda app: app_rank(app["app_label"]))  # stable: ties keep Django's alphabetical order
        for app in apps:
            app["models"].sort(key=lambda model: _model_rank(app["app_label"], model["object_name"]))
        return apps
