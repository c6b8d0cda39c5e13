"""Live migration on the VM page (issue 15 point 6): a "Migrate" button for a running VM opens a page with the
destination host (the hosts that cannot take VMs now are listed, disabled, with why) and "Copy storage"; the POST
calls `vm_migrate` as the API does. While a migration is queued or running, the VM page shows its progress with a
Cancel button and refreshes itself; the Migrations panel lists the VM's migrations, newest first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from projects.admin_scoping import admin_actor
from vaporsite.errors import VaporError
from vms.choices import VmStatus
from vms.host_models import Host
from vms.models import VirtualMachine
from vms.services import migration as services

if TYPE_CHECKING:
    from vms.admin.machines import VirtualMachineAdmin

PAGE = "admin/vms/virtualmachine/day2/migrate.html"
PANEL_ROWS = 10


def migration_context(modeladmin: VirtualMachineAdmin, request: HttpRequest, obj: VirtualMachine) -> dict[str, Any]:
    can_change = modeladmin.has_change_permission(request, obj)
    current = services.vm_migration_current(vm=obj)
    return {
        "vapor_migrations": services.vm_migration_list(vm=obj)[:PANEL_ROWS],
        "vapor_migration_current": current,
        "vapor_migration_cancel_url": reverse("admin:vms_virtualmachine_migration_cancel", args=[obj.pk, current.pk]) if current else "",
        "vapor_migrate_url": reverse("admin:vms_virtualmachine_migrate", args=[obj.pk])
        if can_change and current is None and obj.status == VmStatus.RUNNING
        else "",
        "vapor_migrations_can_change": can_change,
    }


def migration_urls(modeladmin: VirtualMachineAdmin) -> list[Any]:
    def migrate(request: HttpRequest, object_id: str) -> HttpResponse:
        return migrate_view(modeladmin, request, object_id)

    def cancel(request: HttpRequest, object_id: str, migration_id: int) -> HttpResponse:
        return cancel_view(modeladmin, request, object_id, migration_id)

    view = modeladmin.admin_site.admin_view
    return [
        path("<path:object_id>/migrate/", view(migrate), name="vms_virtualmachine_migrate"),
        path("<path:object_id>/migrations/<int:migration_id>/cancel/", view(cancel), name="vms_virtualmachine_migration_cancel"),
    ]


def _vm(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str) -> VirtualMachine | None:
    obj = modeladmin.get_object(request, unquote(object_id))
    if obj is not None and not modeladmin.has_change_permission(request, obj):
        raise PermissionDenied
    return obj


def destinations(vm: VirtualMachine) -> list[dict[str, Any]]:
    """Every other host, with why it cannot take the VM now ("" when it may be chosen; the rest is checked on submit)."""
    return [{"host": host, "why": services.migration_refusal(vm=vm, host=host)} for host in Host.objects.exclude(name=vm.host.name)]


def migrate_view(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """GET: the form; POST: one `vm_migrate`, then the VM page (which shows the progress), or the form again with the refusal."""
    if request.method not in ("GET", "POST"):
        return HttpResponseNotAllowed(["GET", "POST"])
    obj = _vm(modeladmin, request, object_id)
    if obj is None:
        return modeladmin._missing(request, object_id)
    error = ""
    chosen = request.POST.get("host", "")
    copy_storage = request.POST.get("copy_storage") == "on" if request.method == "POST" else True
    if request.method == "POST":
        try:
            migration = services.vm_migrate(vm=obj, host=chosen, copy_storage=copy_storage, actor=admin_actor(request))
        except VaporError as exc:
            error = exc.message
        else:
            modeladmin.message_user(request, f"Migration of {obj.name} to {migration.destination.name} queued.", messages.SUCCESS)
            return redirect("admin:vms_virtualmachine_change", obj.pk)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Migrate {obj.name} to another host",
        "opts": modeladmin.opts,
        "has_view_permission": modeladmin.has_view_permission(request, obj),
        "original": obj,
        "destinations": destinations(obj),
        "chosen": chosen,
        "copy_storage": copy_storage,
        "error": error,
    }
    return TemplateResponse(request, PAGE, context, status=409 if error else 200)


def cancel_view(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str, migration_id: int) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    obj = _vm(modeladmin, request, object_id)
    if obj is None:
        return modeladmin._missing(request, object_id)
    try:
        migration = services.vm_migration_cancel(
            migration=services.vm_migration_get(vm=obj, migration_id=migration_id), actor=admin_actor(request)
        )
    except VaporError as exc:
        modeladmin.message_user(request, f"Cancel refused: {exc.message}", messages.ERROR)
    else:
        done = "cancelled" if migration.finished else "being cancelled"
        modeladmin.message_user(request, f"Migration {migration.pk} of {obj.name} {done}.", messages.SUCCESS)
    return redirect("admin:vms_virtualmachine_change", obj.pk)
