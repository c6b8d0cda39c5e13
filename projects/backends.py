"""Roles grant Django permissions: a member needs no permission set by hand.

A user's model-level permissions are what Django gives them (superuser,
groups, their own) plus what their strongest role in any project grants. Which
objects they may use is decided per project (`projects.access`): a role grants
nothing outside its project.
"""

from __future__ import annotations

from typing import Any

from projects.choices import Role

_VIEW = {"vms.view_virtualmachine", "vms.view_vmtemplate", "vms.view_vmevent", "isos.view_isoimage", "projects.view_project"}
_VIEW |= {"vms.view_host"}  # issue 15: the hypervisor hosts are shared, like the ISO library: every member may see them
_OPERATE = {f"vms.{verb}_{model}" for verb in ("add", "change", "delete") for model in ("virtualmachine", "vmtemplate")} | {
    "vms.use_console"
}
GRANTS: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset(_VIEW),
    Role.OPERATOR: frozenset(_VIEW | _OPERATE),
    Role.ADMIN: frozenset(_VIEW | _OPERATE | {"projects.view_auditentry"}),
}


class ProjectRoleBackend:
    """An authentication backend that authenticates nobody; it only adds the permissions of a user's roles."""

    def authenticate(self, request: Any, **credentials: Any) -> None:
        return None

    def get_user(self, user_id: Any) -> None:
        return None

    def get_all_permissions(self, user_obj: Any, obj: Any = None) -> frozenset[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return frozenset()
        if not hasattr(user_obj, "_vapor_role_perms"):
            roles = set(user_obj.vapor_memberships.values_list("role", flat=True))
            user_obj._vapor_role_perms = frozenset().union(*(GRANTS[Role(role)] for role in roles)) if roles else frozenset()
        return user_obj._vapor_role_perms

    def has_perm(self, user_obj: Any, perm: str, obj: Any = None) -> bool:
        return perm in self.get_all_permissions(user_obj, obj)

    def has_module_perms(self, user_obj: Any, app_label: str) -> bool:
        return any(perm.startswith(app_label + ".") for perm in self.get_all_permissions(user_obj))
