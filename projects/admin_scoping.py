"""Admin pages of project-owned objects (VMs, templates) show only the user's projects.

A superuser sees everything. Others see the objects of their projects; the
object's page is editable and deletable only where they are an operator; and
every change goes through a service given the request's `Actor`, which
checks the role again (an action on a list of several projects' VMs).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.access import Actor, actor_from_request, in_visible_projects, role_of, visible_projects
from projects.choices import RANK, Role, Via


def admin_actor(request: HttpRequest) -> Actor:
    return actor_from_request(request, Via.ADMIN)


class ProjectScopedAdmin(admin.ModelAdmin):
    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return in_visible_projects(super().get_queryset(request).select_related("project"), request.user)

    def _operates(self, request: HttpRequest, obj: Any) -> bool:
        if obj is None or request.user.is_superuser:
            return True
        role = role_of(admin_actor(request), obj.project)
        return role is not None and RANK[Role(role)] >= RANK[Role.OPERATOR]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._operates(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._operates(request, obj)


def project_choices(request: HttpRequest) -> QuerySet[Any]:
    """Projects the user may create in (operator or admin)."""
    return visible_projects(request.user, Role.OPERATOR)
