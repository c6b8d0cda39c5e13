"""The admin page of SSH public keys: every user sees, adds and deletes only their own (superusers too)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.access import SYSTEM, Actor
from projects.admin_scoping import admin_actor
from vaporsite.admin_support import ServiceForm, ServiceSavedAdmin
from vaporsite.errors import VaporError
from vms.cloud_init_models import SshPublicKey
from vms.services.ssh_keys import ssh_key_create, ssh_key_delete


class SshKeyForm(ServiceForm):
    """Name and key, saved by `ssh_key_create` as the API saves them (the same checks, shown on the field)."""

    actor: Actor = SYSTEM  # set per request by SshPublicKeyAdmin.get_form

    class Meta:
        model = SshPublicKey
        fields = ["name", "key"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            self.created = ssh_key_create(name=data.get("name", ""), key=data.get("key", ""), actor=self.actor)
        except VaporError as exc:
            self.service_error(exc)
        return data


def _own(request: HttpRequest, obj: SshPublicKey | None) -> bool:
    return bool(request.user.is_active and request.user.is_staff) and (obj is None or obj.user_id == request.user.pk)


@admin.register(SshPublicKey)
class SshPublicKeyAdmin(ServiceSavedAdmin):
    form = SshKeyForm
    list_display = ("name", "fingerprint", "created_at")
    search_fields = ("name", "fingerprint")

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        base = super().get_form(request, obj, change=change, **kwargs)
        return type(base.__name__, (base,), {"actor": admin_actor(request)})

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ("name", "key", "fingerprint", "created_at") if obj is not None else ()

    def get_queryset(self, request: HttpRequest) -> QuerySet[SshPublicKey]:
        return super().get_queryset(request).filter(user_id=request.user.pk)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _own(request, None)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _own(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return _own(request, None)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is deleted and added again, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _own(request, obj)

    def delete_through_service(self, request: HttpRequest, obj: Any) -> None:
        ssh_key_delete(key_id=obj.pk, actor=admin_actor(request))
