"""API permissions: every action needs the matching Django model permission."""

from __future__ import annotations

from rest_framework.permissions import DjangoModelPermissions


class ModelPermissions(DjangoModelPermissions):
    """Like DRF's, but reading needs the `view` permission too.

    Views with extra actions (cancel, start, ...) set `required_perms` to the
    codenames they need, e.g. ``{"POST": ["change"]}``.
    """

    perms_map = {
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": [],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "POST": ["%(app_label)s.add_%(model_name)s"],
        "PUT": ["%(app_label)s.change_%(model_name)s"],
        "PATCH": ["%(app_label)s.change_%(model_name)s"],
        "DELETE": ["%(app_label)s.delete_%(model_name)s"],
    }

    def has_permission(self, request, view):
        actions = getattr(view, "required_perms", None)
        if actions and request.method in actions:
            if not request.user or not request.user.is_authenticated:
                return False
            queryset = self._queryset(view)
            meta = queryset.model._meta
            perms = [f"{meta.app_label}.{action}_{meta.model_name}" for action in actions[request.method]]
            return bool(request.user.has_perms(perms))
        return super().has_permission(request, view)
