"""Projects (members, quotas with their use, the pools and networks they may use) and the audit trail."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.access import in_visible_projects, visible_projects
from projects.choices import Role
from projects.models import AuditEntry, Membership, Project
from projects.usage import with_usage
from vaporsite.admin_support import ReadOnlyAdmin


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]
    fields = ["user", "role"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    """Superusers manage projects; members see theirs (read-only), with what they use against each quota."""

    list_display = ["name", "description", "member_count", "vms_use", "vcpus_use", "memory_use", "disk_use"]
    search_fields = ["name", "description"]
    inlines = [MembershipInline]
    fieldsets = [
        (None, {"fields": ["name", "description"]}),
        ("Quotas (empty: no limit)", {"fields": ["max_vms", "max_vcpus", "max_memory_mb", "max_disk_gb"]}),
        ("Host resources it may use (empty: any)", {"fields": ["allowed_pools", "allowed_networks", "allowed_bridges"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Project]:
        return with_usage(visible_projects(request.user)).prefetch_related("memberships")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.display(description="members")
    def member_count(self, obj: Project) -> int:
        return len(obj.memberships.all())

    @staticmethod
    def _of(use: int, limit: int | None) -> str:
        return f"{use} / {limit}" if limit is not None else f"{use} (no limit)"

    @admin.display(description="VMs")
    def vms_use(self, obj: Project) -> str:
        return self._of(obj.use_vms, obj.max_vms)  # type: ignore[attr-defined]

    @admin.display(description="vCPUs")
    def vcpus_use(self, obj: Project) -> str:
        return self._of(obj.use_vcpus, obj.max_vcpus)  # type: ignore[attr-defined]

    @admin.display(description="memory (MB)")
    def memory_use(self, obj: Project) -> str:
        return self._of(obj.use_memory_mb, obj.max_memory_mb)  # type: ignore[attr-defined]

    @admin.display(description="disk (GB)")
    def disk_use(self, obj: Project) -> str:
        return self._of(obj.use_disk_gb, obj.max_disk_gb)  # type: ignore[attr-defined]


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Who did what, from where, in which project: read-only. Project admins see their projects' entries."""

    list_display = ["at", "username", "source_address", "via", "project", "action", "target", "detail"]
    list_filter = ["action", "via", "project", ("user", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["username", "target", "detail", "source_address"]
    date_hierarchy = "at"
    list_select_related = ["project"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEntry]:
        return in_visible_projects(super().get_queryset(request), request.user, Role.ADMIN)
