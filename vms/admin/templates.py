"""VM templates in the admin: the template with its disk and NIC rows, checked
by the same rules as the API's (the template service)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import redirect

from vaporsite.admin_support import VaporModelAdmin
from vaporsite.errors import VaporError
from vms.models import TemplateDisk, TemplateNic, VmTemplate
from vms.services import templates as template_services
from vms.services.requests import DiskRequest


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
