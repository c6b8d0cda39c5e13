"""The VM page's Disks & CD-ROMs panel (day two: disks): attach, grow, detach, insert and eject.

Each form posts to one view here, which calls the same service as the API
(`vms.services.devices`, `vms.services.cdroms`) with the admin's actor, says
what happened in a message, and goes back to the VM page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path, reverse

from projects.access import Actor
from projects.admin_scoping import admin_actor
from vaporsite.errors import InvalidInput, VaporError
from vms.choices import DiskBus
from vms.models import VirtualMachine
from vms.services import cdroms, devices
from vms.services.requests import DiskRequest

if TYPE_CHECKING:
    from vms.admin.machines import VirtualMachineAdmin

OPS = ("attach", "grow", "detach", "cdrom")


def disks_context(admin: VirtualMachineAdmin, request: HttpRequest, obj: VirtualMachine) -> dict[str, Any]:
    """What day2/disks_panel.html and disks_outside.html show: the disks, the CD-ROMs holding a library ISO, the forms' urls.

    Read from the rows only: the page opens no connection of its own for this panel (an empty drive, known
    only to the domain, is named in the CD-ROM form by its device, e.g. sda)."""
    cdrom_rows = list(obj.cdroms.select_related("iso"))
    return {
        "vapor_disks": {
            "disks": list(obj.disks.all()),
            "cdroms": cdrom_rows,
            "cdrom_targets": sorted({c.target_dev for c in cdrom_rows if c.target_dev} or {"sda"}),
            "can_change": admin.has_change_permission(request, obj),
            "buses": DiskBus.choices,
            "urls": {op: reverse("admin:vms_virtualmachine_disks", args=[obj.pk, op]) for op in OPS},
        }
    }


def disk_urls(admin: VirtualMachineAdmin) -> list[Any]:
    return [
        path(
            "<path:object_id>/disks/<str:op>/",
            admin.admin_site.admin_view(lambda request, object_id, op: disks_view(admin, request, object_id, op)),
            name="vms_virtualmachine_disks",
        )
    ]


def _number(value: str, field: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidInput("must be a whole number of GB", field=field) from None


def _run(op: str, vm: VirtualMachine, post: Any, actor: Actor) -> str:
    if op == "attach":
        asked = DiskRequest(size=_number(post.get("size", ""), "size"), bus=post.get("bus", "virtio"))
        disk = devices.disk_attach(vm=vm, request=asked, actor=actor)
        return f"Disk {disk.target_dev} attached ({disk.size_gb} GB, {disk.bus})."
    target = post.get("target_dev", "")
    if op == "grow":
        disk = devices.disk_grow(vm=vm, target_dev=target, size_gb=_number(post.get("size_gb", ""), "size_gb"), actor=actor)
        return f"Disk {target} is now {disk.size_gb} GB."
    if op == "detach":
        delete = post.get("delete_volume") == "on"
        devices.disk_detach(vm=vm, target_dev=target, delete_volume=delete, actor=actor)
        return f"Disk {target} detached{' and its volume deleted' if delete else ''}."
    ref = post.get("iso", "").strip() or None
    drive = cdroms.cdrom_change(vm=vm, target_dev=target, iso=ref, actor=actor)
    return f"CD-ROM {target}: {drive.iso.name} inserted." if drive.iso else f"CD-ROM {target} ejected."


def disks_view(admin: VirtualMachineAdmin, request: HttpRequest, object_id: str, op: str) -> HttpResponse:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if op not in OPS:
        raise Http404(f"no disk operation {op!r}")
    obj = admin.get_object(request, unquote(object_id))
    if obj is None:
        messages.warning(request, f"There is no virtual machine with ID {object_id!r} here. Perhaps it was deleted?")
        return redirect("admin:index")
    if not admin.has_change_permission(request, obj):
        raise PermissionDenied
    try:
        done = _run(op, obj, request.POST, admin_actor(request))
    except VaporError as exc:
        where = f" ({exc.field})" if exc.field else ""
        messages.error(request, f"Refused{where}: {exc.message}")
    else:
        messages.success(request, done)
    return redirect("admin:vms_virtualmachine_change", obj.pk)
