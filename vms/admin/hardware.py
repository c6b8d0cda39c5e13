"""The VM's "Change hardware" page (/admin/vms/virtualmachine/<id>/hardware/): memory, vCPUs, maxima,
boot order, autostart, and NICs added or removed, through the same services as the API
(vms.services.hardware). A refusal is shown on the field it names; nothing is changed then."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse

from projects.admin_scoping import admin_actor
from vaporsite.errors import VaporError
from vms.choices import NicModel, NicType, VmStatus
from vms.models import VirtualMachine
from vms.services import hardware as services
from vms.services.requests import NicRequest

if TYPE_CHECKING:
    from vms.admin.machines import VirtualMachineAdmin

CHANGEABLE = (VmStatus.RUNNING, VmStatus.STOPPED)


class HardwareForm(forms.Form):
    memory = forms.IntegerField(label="Memory (MB)", help_text="Changes live on a running VM, up to the maximum.")
    max_memory = forms.IntegerField(label="Maximum memory (MB)", help_text="Only while the VM is stopped.")
    vcpus = forms.IntegerField(label="vCPUs", help_text="Changes live on a running VM, up to the maximum.")
    max_vcpus = forms.IntegerField(label="Maximum vCPUs", help_text="Only while the VM is stopped.")
    boot_order = forms.CharField(
        label="Boot order",
        required=False,
        help_text='Comma-separated: "hd", "cdrom", "network", or devices (vda, sda, a NIC\'s MAC). Empty: unchanged. Next boot.',
    )
    autostart = forms.BooleanField(label="Start with the host", required=False)


class NicForm(forms.Form):
    type = forms.ChoiceField(choices=NicType.choices, initial=NicType.NAT)
    source = forms.CharField(max_length=64, initial="default", help_text="The libvirt network (NAT) or host bridge.")
    model = forms.ChoiceField(choices=NicModel.choices, initial=NicModel.VIRTIO)
    mac = forms.CharField(max_length=17, required=False, label="MAC", help_text="Empty: a new one.")


def hardware_context(modeladmin: VirtualMachineAdmin, request: HttpRequest, obj: VirtualMachine) -> dict[str, Any]:
    """The VM page's "Change hardware" button, for a user who may change the VM while it has a domain."""
    if obj.status not in CHANGEABLE or not modeladmin.has_change_permission(request, obj):
        return {"hardware_url": ""}
    return {"hardware_url": reverse("admin:vms_virtualmachine_hardware", args=[obj.pk])}


def _boot_order(vm: VirtualMachine) -> str:
    rows = [(d.boot_order, d.target_dev) for d in vm.disks.all()] + [(c.boot_order, c.target_dev) for c in vm.cdroms.all()]
    rows += [(n.boot_order, n.mac) for n in vm.nics.all()]
    return ", ".join(key for order, key in sorted(r for r in rows if r[0] is not None))


def _initial(vm: VirtualMachine) -> dict[str, Any]:
    return {
        "memory": vm.memory_mb,
        "max_memory": vm.memory_maximum,
        "vcpus": vm.vcpus,
        "max_vcpus": vm.vcpus_maximum,
        "boot_order": _boot_order(vm),
        "autostart": vm.autostart,
    }


def _change(vm: VirtualMachine, data: dict[str, Any]) -> services.HardwareChange:
    """Only what the form changed: an unchanged maximum on a running VM is no request to change it."""
    initial = _initial(vm)
    order = [part.strip() for part in (data.get("boot_order") or "").split(",") if part.strip()]
    changed = {name: data[name] for name in ("memory", "max_memory", "vcpus", "max_vcpus", "autostart") if data[name] != initial[name]}
    boot = tuple(order) if order and ", ".join(order) != initial["boot_order"] else None
    return services.HardwareChange(**changed, boot_order=boot)


def _refusal(form: forms.Form, exc: VaporError) -> None:
    field = (exc.field or "").split(".")[0]
    form.add_error(field if field in form.fields else None, exc.message)


def hardware_view(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    vm = modeladmin.get_object(request, unquote(object_id))
    if vm is None:
        return modeladmin._missing(request, object_id)
    if not modeladmin.has_change_permission(request, vm):
        raise PermissionDenied
    form = HardwareForm(initial=_initial(vm))
    nic_form = NicForm()
    back = redirect("admin:vms_virtualmachine_hardware", vm.pk)
    if request.method == "POST":
        what = request.POST.get("what")
        try:
            if what == "hardware":
                form = HardwareForm(request.POST, initial=_initial(vm))
                if form.is_valid():
                    applied = services.vm_hardware_change(vm=vm, change=_change(vm, form.cleaned_data), actor=admin_actor(request))
                    _report(modeladmin, request, applied)
                    return back
            elif what == "add_nic":
                nic_form = NicForm(request.POST)
                if nic_form.is_valid():
                    data = dict(nic_form.cleaned_data)
                    mac = data.pop("mac") or None
                    applied = services.vm_nic_add(vm=vm, nic=NicRequest(**data), mac=mac, actor=admin_actor(request))
                    _report(modeladmin, request, applied)
                    return back
            elif what == "remove_nic":
                applied = services.vm_nic_remove(vm=vm, mac=request.POST.get("mac", ""), actor=admin_actor(request))
                _report(modeladmin, request, applied)
                return back
        except VaporError as exc:
            if what == "remove_nic":
                modeladmin.message_user(request, f"Not removed: {exc.message}", messages.ERROR)
                return back
            _refusal(form if what == "hardware" else nic_form, exc)
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": f"Change hardware: {vm.name}",
        "opts": modeladmin.opts,
        "has_view_permission": True,
        "original": vm,
        "form": form,
        "nic_form": nic_form,
        "nics": vm.nics.all(),
        "running": vm.status == VmStatus.RUNNING,
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/vms/virtualmachine/hardware.html", context)


def _report(modeladmin: VirtualMachineAdmin, request: HttpRequest, applied: services.Applied) -> None:
    if not applied.persistent:
        modeladmin.message_user(request, "Nothing to change.", messages.INFO)
    else:
        live = f"; live: {', '.join(applied.live)}" if applied.live else ""
        modeladmin.message_user(request, f"Changed {', '.join(applied.persistent)}{live}.", messages.SUCCESS)
    for warning in applied.warnings:
        if applied.persistent:
            modeladmin.message_user(request, warning[:1].upper() + warning[1:] + ".", messages.WARNING)
