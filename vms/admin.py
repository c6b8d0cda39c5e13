"""VMs in the admin: list, detail with disks/NICs/CD-ROMs and the event log,
the domain XML (password masked), lifecycle actions, and a simple create
form that goes through the same service as the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from isos.choices import IsoStatus
from isos.models import IsoImage
from vaporsite.admin_support import ServiceForm, ServiceSavedAdmin
from vaporsite.errors import VaporError
from vms.choices import DiskBus, NicModel, NicType
from vms.hypervisor.domain_xml import domain_xml
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services import vms as services
from vms.services.provisioning import domain_spec
from vms.services.requests import DiskRequest, GraphicsRequest, NicRequest, VmRequest


class _ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DiskInline(_ReadOnlyInline):
    model = Disk
    fields = [
        "target_dev",
        "source",
        "path",
        "size_gb",
        "format",
        "bus",
        "boot_order",
        "readonly",
        "linked",
        "source_path",
        "created_by_vapor",
    ]


class NicInline(_ReadOnlyInline):
    model = NetworkInterface
    fields = ["order", "type", "source", "model", "mac"]


class CdromInline(_ReadOnlyInline):
    model = CdromAttachment
    fields = ["slot", "iso", "reference", "resolved_by", "target_dev", "boot_order"]


class EventInline(_ReadOnlyInline):
    model = VmEvent
    fields = ["at", "step", "status", "message"]
    readonly_fields = ["at"]
    verbose_name_plural = "event log"


class VmAddForm(ServiceForm):
    """The common case in one form: new disk, optional ISOs, one NIC."""

    vm_name = forms.CharField(label="Name", max_length=64)
    memory = forms.IntegerField(label="Memory (MB)", initial=2048, min_value=64)
    cpus = forms.IntegerField(label="vCPUs", initial=2, min_value=1)
    disk_size = forms.IntegerField(label="Disk (GB)", initial=20, min_value=1)
    disk_bus = forms.ChoiceField(choices=DiskBus.choices, initial="virtio")
    iso = forms.ModelChoiceField(queryset=IsoImage.objects.filter(status=IsoStatus.READY), required=False, label="Install ISO")
    driver_iso = forms.ModelChoiceField(queryset=IsoImage.objects.filter(status=IsoStatus.READY), required=False, label="Driver ISO")
    variant = forms.CharField(label="OS variant", required=False, help_text="osinfo-db short id, e.g. ubuntu22.04, win11.")
    network_type = forms.ChoiceField(choices=NicType.choices, initial="nat")
    network_source = forms.CharField(initial="default", max_length=64)
    network_model = forms.ChoiceField(choices=NicModel.choices, initial="virtio")
    firmware_uefi = forms.BooleanField(label="UEFI", required=False)
    firmware_secure_boot = forms.BooleanField(label="Secure Boot", required=False)
    firmware_tpm = forms.BooleanField(label="TPM 2.0", required=False)
    pool = forms.CharField(label="Storage pool", initial="default", max_length=64)
    start_on_boot = forms.BooleanField(label="Autostart", required=False)
    vnc_password = forms.CharField(label="VNC password", required=False, max_length=8, widget=forms.PasswordInput)

    class Meta:
        model = VirtualMachine
        fields: list[str] = []

    field_aliases = {"name": "vm_name", "vcpus": "cpus", "os_variant": "variant", "storage_pool": "pool",
                     "iso_path": "iso", "secondary_iso": "driver_iso", "secure_boot": "firmware_secure_boot",
                     "graphics.password": "vnc_password", "networks.0.source": "network_source", "disks.0.bus": "disk_bus"}  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        request = VmRequest(
            name=data["vm_name"],
            memory=data["memory"],
            vcpus=data["cpus"],
            disks=(DiskRequest(size=data["disk_size"], bus=data["disk_bus"]),),
            iso_path=data["iso"].pk if data.get("iso") else None,
            secondary_iso=data["driver_iso"].pk if data.get("driver_iso") else None,
            os_variant=data.get("variant", ""),
            uefi=data.get("firmware_uefi", False),
            secure_boot=data.get("firmware_secure_boot", False),
            tpm=data.get("firmware_tpm", False),
            networks=(NicRequest(type=data["network_type"], source=data["network_source"], model=data["network_model"]),),
            graphics=GraphicsRequest(password=data.get("vnc_password") or None),
            storage_pool=data["pool"],
            autostart=data.get("start_on_boot", False),
        )
        try:
            result = services.vm_create(request=request)
        except VaporError as exc:
            self.service_error(exc)
            return data
        assert isinstance(result, VirtualMachine)
        self.created = result
        return data


def _action(label: str, action: str) -> Callable[..., None]:
    def run(modeladmin: VirtualMachineAdmin, request: HttpRequest, queryset: QuerySet[VirtualMachine]) -> None:
        for vm in queryset:
            try:
                if action == "delete":
                    services.vm_delete(vm=vm)
                else:
                    services.vm_action(vm=vm, action=action)
                modeladmin.message_user(request, f"{label}: {vm.name}", messages.SUCCESS)
            except VaporError as exc:
                modeladmin.message_user(request, f"{vm.name}: {exc.message}", messages.ERROR)

    run.__name__ = f"action_{action.replace('-', '_')}"
    return admin.action(description=f"{label} the selected VMs", permissions=["delete" if action == "delete" else "change"])(run)


@admin.register(VirtualMachine)
class VirtualMachineAdmin(ServiceSavedAdmin):
    list_display = ["name", "status_badge", "memory_mb", "vcpus", "os_variant", "firmware", "storage_pool", "autostart", "created_at"]
    list_filter = ["status", "uefi", "os_type", "storage_pool", "autostart"]
    search_fields = ["name", "uuid", "os_variant", "disks__path", "nics__mac"]
    actions = [_action("Start", "start"), _action("Shut down", "stop"), _action("Force off", "force-stop"), _action("Delete", "delete")]
    inlines = [DiskInline, CdromInline, NicInline, EventInline]
    readonly_fields = [
        "name", "uuid", "status", "error", "memory_mb", "vcpus", "os_type", "os_variant", "architecture", "virt_type", "machine",
        "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "graphics_type", "graphics_port", "graphics_listen",
        "graphics_password_set", "created_at", "domain_xml_preview",
    ]  # fmt: skip

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # Vapor's delete also removes the domain and volumes
        return actions

    def get_form(self, request: HttpRequest, obj: VirtualMachine | None = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = VmAddForm
            kwargs["fields"] = list(VmAddForm.base_fields)
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        if obj is None:
            return [
                (None, {"fields": ["vm_name", "memory", "cpus", "variant"]}),
                ("Storage", {"fields": ["disk_size", "disk_bus", "pool", "iso", "driver_iso"]}),
                ("Network", {"fields": ["network_type", "network_source", "network_model"]}),
                (
                    "Firmware and console",
                    {"fields": ["firmware_uefi", "firmware_secure_boot", "firmware_tpm", "vnc_password", "start_on_boot"]},
                ),
            ]
        return [
            (None, {"fields": ["name", "uuid", "status", "error", "created_at"]}),
            ("Hardware", {"fields": ["memory_mb", "vcpus", "architecture", "virt_type", "machine", "storage_pool", "autostart"]}),
            ("OS and firmware", {"fields": ["os_type", "os_variant", "uefi", "secure_boot", "tpm"]}),
            ("Console", {"fields": ["graphics_type", "graphics_port", "graphics_listen", "graphics_password_set"]}),
            ("Domain XML", {"fields": ["domain_xml_preview"], "classes": ["collapse"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return self.readonly_fields if obj else []

    def get_inlines(self, request: HttpRequest, obj: VirtualMachine | None) -> Any:
        return self.inlines if obj else []

    def delete_model(self, request: HttpRequest, obj: VirtualMachine) -> None:
        services.vm_delete(vm=obj)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: VirtualMachine) -> str:
        colours = {"running": "#2e7d32", "failed": "#ba2121", "provisioning": "#b26a00", "deleting": "#b26a00"}
        return format_html('<b style="color:{}" title="{}">{}</b>', colours.get(obj.status, "#555"), obj.error, obj.get_status_display())

    @admin.display(description="Firmware")
    def firmware(self, obj: VirtualMachine) -> str:
        if not obj.uefi:
            return "BIOS"
        return "UEFI" + (" + Secure Boot" if obj.secure_boot else "") + (" + TPM" if obj.tpm else "")

    @admin.display(description="Domain XML (password masked)")
    def domain_xml_preview(self, obj: VirtualMachine) -> str:
        password = "x" if obj.graphics_password_set else None
        return format_html(
            '<pre style="max-height:30em;overflow:auto">{}</pre>', domain_xml(domain_spec(obj, password=password), mask_secrets=True)
        )
