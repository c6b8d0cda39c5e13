"""VMs and templates in the admin: the VM list (stored state, never a libvirt
call per row), detail with disks/NICs/CD-ROMs and the event log, the domain
XML (password masked), lifecycle and refresh actions, the "Create virtual
machine" page (`admin_create.py`), and templates with their disk and NIC
rows, checked by the same rules as the API's."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import path
from django.utils.html import format_html

from vaporsite.admin_support import VaporModelAdmin
from vaporsite.errors import VaporError
from vms import admin_create, hypervisor
from vms.choices import VmStatus
from vms.hypervisor.documents.domain import domain_xml
from vms.models import CdromAttachment, Disk, NetworkInterface, TemplateDisk, TemplateNic, VirtualMachine, VmEvent, VmTemplate
from vms.services import sync
from vms.services import templates as template_services
from vms.services import vms as services
from vms.services.design import domain_spec
from vms.services.requests import DiskRequest


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


@admin.action(description="Refresh state from the host", permissions=["change"])
def refresh_states(modeladmin: VirtualMachineAdmin, request: HttpRequest, queryset: QuerySet[VirtualMachine]) -> None:
    """One libvirt listing for all VMs (the selection only says the operator asked)."""
    try:
        count = sync.vm_refresh_states()
    except VaporError as exc:
        modeladmin.message_user(request, f"Could not read the host: {exc.message}", messages.ERROR)
        return
    modeladmin.message_user(request, f"State read from the host for {count} VM(s).", messages.SUCCESS)


@admin.register(VirtualMachine)
class VirtualMachineAdmin(VaporModelAdmin):
    list_display = [
        "name", "status_badge", "state", "memory_mb", "vcpus", "os_variant", "firmware", "template", "storage_pool", "autostart",
        "state_checked_at",
    ]  # fmt: skip
    list_filter = ["status", "uefi", "os_type", "template", "storage_pool", "autostart"]
    list_select_related = ["template"]
    search_fields = ["name", "uuid", "os_variant", "disks__path", "nics__mac"]
    actions = [
        _action("Start", "start"), _action("Shut down", "stop"), _action("Force off", "force-stop"), _action("Delete", "delete"),
        refresh_states,
    ]  # fmt: skip
    inlines = [DiskInline, CdromInline, NicInline, EventInline]
    readonly_fields = [
        "name", "uuid", "status", "error", "memory_mb", "vcpus", "os_type", "os_variant", "architecture", "virt_type", "machine",
        "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "graphics_type", "graphics_port", "graphics_listen",
        "graphics_password_set", "created_at", "template", "state", "state_checked_at", "console", "domain_xml_preview",
    ]  # fmt: skip

    def get_urls(self) -> list[Any]:
        own = [
            path("iso-picker/", self.admin_site.admin_view(admin_create.iso_picker_view), name="vms_virtualmachine_iso_picker"),
        ]
        return own + super().get_urls()

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return admin_create.create_view(self, request)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        # Nothing on the VM page is edited in place (changes are the list's actions): no save buttons.
        extra = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # Vapor's delete also removes the domain and volumes
        return actions

    def get_fieldsets(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return [
            (None, {"fields": ["name", "uuid", "status", "state", "state_checked_at", "error", "template", "created_at"]}),
            ("Hardware", {"fields": ["memory_mb", "vcpus", "architecture", "virt_type", "machine", "storage_pool", "autostart"]}),
            ("OS and firmware", {"fields": ["os_type", "os_variant", "uefi", "secure_boot", "tpm"]}),
            ("Console", {"fields": ["console", "graphics_type", "graphics_port", "graphics_listen", "graphics_password_set"]}),
            ("Domain XML", {"fields": ["domain_xml_preview"], "classes": ["collapse"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return self.readonly_fields

    def delete_model(self, request: HttpRequest, obj: VirtualMachine) -> None:
        services.vm_delete(vm=obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        """The delete page; a refusal (still provisioning) or a libvirt failure is a message, not a 500."""
        try:
            return super().delete_view(request, object_id, extra_context)
        except VaporError as exc:
            self.message_user(request, f"Not deleted: {exc.message}", messages.ERROR)
            return redirect("admin:vms_virtualmachine_change", object_id)

    @admin.display(description="Console")
    def console(self, obj: VirtualMachine) -> str:
        """Where the console listens: the port libvirt assigned, read from the live domain (one call, this page only)."""
        if obj.graphics_type == "none":
            return "none"
        where = f"{obj.get_graphics_type_display()} on {obj.graphics_listen}"
        if obj.status != VmStatus.RUNNING:
            return f"{where}, port {'assigned at start' if obj.graphics_port == -1 else obj.graphics_port}"
        try:
            with closing(hypervisor.get_hypervisor()) as hv:
                live = hv.console(obj.name)
        except VaporError as exc:
            return f"{where} (could not read the host: {exc.message})"
        return f"{where}:{live.port}" + (" (password set)" if live.password_set else "")

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: VirtualMachine) -> str:
        colours = {"running": "#2e7d32", "failed": "#ba2121", "provisioning": "#b26a00", "deleting": "#b26a00"}
        return format_html('<b style="color:{}" title="{}">{}</b>', colours.get(obj.status, "#555"), obj.error, obj.get_status_display())

    @admin.display(description="Domain XML (password masked)")
    def domain_xml_preview(self, obj: VirtualMachine) -> str:
        password = "x" if obj.graphics_password_set else None
        return format_html(
            '<pre style="max-height:30em;overflow:auto">{}</pre>', domain_xml(domain_spec(obj, password=password), mask_secrets=True)
        )


# --- templates -------------------------------------------------------------------------


class TemplateAdminForm(forms.ModelForm):
    """The template's own fields, checked by the service's rules (the disks are checked with their rows)."""

    class Meta:
        model = VmTemplate
        fields = ["name", "description", "memory_mb", "vcpus", "architecture", "storage_pool", "os_type", "os_variant",
                  "uefi", "secure_boot", "tpm", "iso", "graphics_type"]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        try:
            template_services.template_validate(_template_data(data, disks=()))
        except VaporError as exc:
            self.add_error(_form_field(exc.field, self.fields), exc.message)
        return data


def _template_data(values: dict[str, Any], disks: tuple[DiskRequest, ...]) -> template_services.TemplateData:
    iso = values.get("iso")
    return template_services.TemplateData(
        name=values.get("name") or "",
        memory=values.get("memory_mb") or 0,
        vcpus=values.get("vcpus") or 0,
        os_type=values.get("os_type") or "",
        os_variant=values.get("os_variant") or "",
        architecture=values.get("architecture") or "x86_64",
        uefi=bool(values.get("uefi")),
        secure_boot=bool(values.get("secure_boot")),
        tpm=bool(values.get("tpm")),
        graphics_type=values.get("graphics_type") or "vnc",
        storage_pool=values.get("storage_pool") or "",
        iso=iso.pk if iso else None,
        disks=disks,
    )


def _form_field(field: str | None, fields: Any) -> str | None:
    name = {"memory": "memory_mb"}.get(field or "", field or "")
    return name if name in fields else None


class TemplateDiskFormSet(forms.BaseInlineFormSet):
    """Checks the disk rows with the same rules as the API: sizes, clone sources (inside the roots,
    a safe backing chain, not shrunk), linked clones, boot orders, buses against Secure Boot."""

    def clean(self) -> None:
        super().clean()
        rows = [f for f in self.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
        rows.sort(key=lambda f: f.cleaned_data.get("order") or 0)
        disks = tuple(
            DiskRequest(
                size=f.cleaned_data.get("size_gb"),
                clone_from=f.cleaned_data.get("clone_from") or None,
                source_format=f.cleaned_data.get("source_format") or None,
                linked=bool(f.cleaned_data.get("linked")),
                format=f.cleaned_data.get("format") or "qcow2",
                bus=f.cleaned_data.get("bus") or "virtio",
                boot_order=f.cleaned_data.get("boot_order"),
            )
            for f in rows
        )
        template = self.instance
        values = {name: getattr(template, name) for name in ("name", "memory_mb", "vcpus", "os_type", "os_variant", "architecture",
                                                             "uefi", "secure_boot", "tpm", "graphics_type", "storage_pool")}  # fmt: skip
        values["iso"] = None  # checked by the template's own form
        try:
            template_services.template_validate(_template_data(values, disks))
        except VaporError as exc:
            parts = (exc.field or "").split(".")
            if parts[0] == "disks" and len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < len(rows):
                name = {"size": "size_gb"}.get(parts[2], parts[2]) if len(parts) > 2 else None
                row = rows[int(parts[1])]
                row.add_error(name if name in row.fields else None, exc.message)
            else:
                raise forms.ValidationError(exc.message) from None


class AddedRowForm(forms.ModelForm):
    """A row added with "Add another" counts even if it keeps every default
    (there are no blank extra rows: `extra = 0`)."""

    def has_changed(self) -> bool:
        return True if self.instance.pk is None else super().has_changed()


class TemplateDiskInline(admin.TabularInline):
    form = AddedRowForm
    model = TemplateDisk
    formset = TemplateDiskFormSet
    extra = 0
    fields = ["order", "size_gb", "clone_from", "source_format", "linked", "format", "bus", "boot_order"]


class TemplateNicInline(admin.TabularInline):
    model = TemplateNic
    form = AddedRowForm
    extra = 0
    fields = ["order", "type", "source", "model"]


@admin.register(VmTemplate)
class VmTemplateAdmin(VaporModelAdmin):
    form = TemplateAdminForm
    list_display = [
        "name",
        "memory_mb",
        "vcpus",
        "os_variant",
        "firmware",
        "graphics_type",
        "iso",
        "disk_summary",
        "vm_count",
        "updated_at",
    ]
    list_filter = ["uefi", "os_type", "architecture"]
    search_fields = ["name", "description", "os_variant"]
    autocomplete_fields = ["iso"]
    inlines = [TemplateDiskInline, TemplateNicInline]
    fieldsets = [
        (None, {"fields": ["name", "description"]}),
        ("Hardware", {"fields": ["memory_mb", "vcpus", "architecture", "storage_pool"]}),
        ("OS and firmware", {"fields": ["os_type", "os_variant", "uefi", "secure_boot", "tpm"]}),
        ("Install media and console", {"fields": ["iso", "graphics_type"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[VmTemplate]:
        from django.db.models import Count

        return super().get_queryset(request).select_related("iso").prefetch_related("disks").annotate(vm_total=Count("vms"))

    @admin.display(description="Disks")
    def disk_summary(self, obj: VmTemplate) -> str:
        parts = []
        for disk in obj.disks.all():
            if disk.clone_from:
                kind = "linked clone" if disk.linked else "clone"
                parts.append(f"{kind} of {disk.clone_from.rsplit('/', 1)[-1]}" + (f" ({disk.size_gb} GB)" if disk.size_gb else ""))
            else:
                parts.append(f"{disk.size_gb} GB")
        return ", ".join(parts) or "-"

    @admin.display(description="VMs", ordering="vm_total")
    def vm_count(self, obj: VmTemplate) -> int:
        return obj.vm_total  # type: ignore[attr-defined]

    def delete_model(self, request: HttpRequest, obj: VmTemplate) -> None:
        template_services.template_delete(template=obj)

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        try:
            return super().delete_view(request, object_id, extra_context)
        except VaporError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return redirect("admin:vms_vmtemplate_change", object_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[VmTemplate]) -> None:
        for template in queryset:
            try:
                template_services.template_delete(template=template)
            except VaporError as exc:
                self.message_user(request, exc.message, messages.ERROR)
