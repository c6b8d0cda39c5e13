"""Snapshots on the VM page (issue 14 item 4): the Snapshots panel (day2/snapshots_panel.html) lists them with
Revert and Delete links to confirmation pages; the "Take snapshot" form (day2/snapshots_outside.html) is a POST
form of its own. Each POST calls one service of `vms.services.snapshots`, as the API does."""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from projects.admin_scoping import admin_actor
from vaporsite.errors import NotFound, VaporError
from vms import hypervisor
from vms.models import VirtualMachine
from vms.services import snapshots as services

if TYPE_CHECKING:
    from vms.admin.machines import VirtualMachineAdmin

CONFIRM = "admin/vms/virtualmachine/day2/snapshots_confirm.html"
WHAT = {
    "revert": (
        "Revert",
        "The VM's disks go back to this snapshot; what was written since is lost. A snapshot with memory leaves the VM "
        "running from that moment; a disk-only one leaves it shut off (a running VM is powered off first).",
    ),
    "delete": ("Delete", "The snapshot is deleted from the VM's disks (with its copy of the UEFI variables); the VM is not changed."),
}


def snapshot_context(modeladmin: VirtualMachineAdmin, request: HttpRequest, obj: VirtualMachine) -> dict[str, Any]:
    """The panel's and the form's context: the snapshots with their links, and whether the user may change them."""
    can_change = modeladmin.has_change_permission(request, obj)
    rows = [
        {
            "snapshot": s,
            "revert_url": reverse("admin:vms_virtualmachine_snapshot", args=[obj.pk, s.name, "revert"]),
            "delete_url": reverse("admin:vms_virtualmachine_snapshot", args=[obj.pk, s.name, "delete"]),
        }
        for s in services.vm_snapshot_list(vm=obj)
    ]
    return {
        "vapor_snapshots": rows,
        "vapor_snapshots_can_change": can_change,
        "vapor_snapshot_take_url": reverse("admin:vms_virtualmachine_snapshot_take", args=[obj.pk]),
    }


def snapshot_urls(modeladmin: VirtualMachineAdmin) -> list[Any]:
    def take(request: HttpRequest, object_id: str) -> HttpResponse:
        return take_view(modeladmin, request, object_id)

    def confirm(request: HttpRequest, object_id: str, name: str, action: str) -> HttpResponse:
        return confirm_view(modeladmin, request, object_id, name, action)

    view = modeladmin.admin_site.admin_view
    return [
        path("<path:object_id>/snapshots/take/", view(take), name="vms_virtualmachine_snapshot_take"),
        path("<path:object_id>/snapshots/<str:name>/<str:action>/", view(confirm), name="vms_virtualmachine_snapshot"),
    ]


def _vm(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str) -> VirtualMachine | None:
    obj = modeladmin.get_object(request, unquote(object_id))
    if obj is not None and not modeladmin.has_change_permission(request, obj):
        raise PermissionDenied
    return obj


def take_view(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """The "Take snapshot" form: POST only; one `vm_snapshot_create`; a message, and back to the VM page."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    obj = _vm(modeladmin, request, object_id)
    if obj is None:
        return modeladmin._missing(request, object_id)
    name = request.POST.get("name", "").strip()
    try:
        with closing(hypervisor.get_hypervisor(obj.host.libvirt_uri)) as hv:
            services.vm_snapshot_create(
                vm=obj,
                name=name,
                description=request.POST.get("description", "").strip(),
                memory=request.POST.get("memory") == "on",
                hv=hv,
                actor=admin_actor(request),
            )
    except VaporError as exc:
        modeladmin.message_user(request, f"Snapshot refused: {exc.message}", messages.ERROR)
    else:
        modeladmin.message_user(request, f"Snapshot {name} of {obj.name} taken.", messages.SUCCESS)
    return redirect("admin:vms_virtualmachine_change", obj.pk)


def confirm_view(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str, name: str, action: str) -> HttpResponse:
    """Revert or delete a snapshot: a confirmation page (GET), then one service call (POST)."""
    if action not in WHAT:
        return modeladmin._missing(request, object_id)
    obj = _vm(modeladmin, request, object_id)
    if obj is None:
        return modeladmin._missing(request, object_id)
    back = redirect("admin:vms_virtualmachine_change", obj.pk)
    try:
        snapshot = services.vm_snapshot_get(vm=obj, name=name)
    except NotFound as exc:
        modeladmin.message_user(request, exc.message, messages.WARNING)
        return back
    label, explanation = WHAT[action]
    if request.method == "POST":
        try:
            with closing(hypervisor.get_hypervisor(obj.host.libvirt_uri)) as hv:
                if action == "revert":
                    done = services.vm_snapshot_revert(vm=obj, name=name, hv=hv, actor=admin_actor(request))
                    outcome = f"VM {obj.name} reverted to snapshot {name}, now {done.state}."
                else:
                    services.vm_snapshot_delete(vm=obj, name=name, hv=hv, actor=admin_actor(request))
                    outcome = f"Snapshot {name} of {obj.name} deleted."
        except VaporError as exc:
            modeladmin.message_user(request, f"{label} refused: {exc.message}", messages.ERROR)
        else:
            modeladmin.message_user(request, outcome, messages.SUCCESS)
        return back
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"{label} snapshot {name} of {obj.name}?",
        "opts": modeladmin.opts,
        "has_view_permission": modeladmin.has_view_permission(request, obj),
        "original": obj,
        "snapshot": snapshot,
        "action": action,
        "label": label,
        "explanation": explanation,
    }
    return TemplateResponse(request, CONFIRM, context)
