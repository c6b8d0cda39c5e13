"""VM templates in the admin: the template with its disk and NIC rows, saved
through the template service as the API's are (same rules, same stored values)."""

from __future__ import annotations

import dataclasses
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.access import SYSTEM, Actor
from projects.admin_scoping import ProjectScopedAdmin, admin_actor, project_choices
from vaporsite.admin_support import ErrorRows, ServiceForm, ServiceSavedAdmin, show_service_error
from vaporsite.errors import VaporError
from vms.models import TemplateDisk, TemplateNic, VmTemplate
from vms.services import templates as template_services
from vms.services.requests import DiskRequest, NicRequest


class TemplateAdminForm(ServiceForm):
    actor: Actor = SYSTEM  # set per request by VmTemplateAdmin.get_form

    """The template with its disk and NIC rows, saved by the template service as the API saves it
    (same rules, same stored values, e.g. the OS type derived from the variant); the service's
    errors are shown on the field or row they name."""

    class Meta:
        model = VmTemplate
        fields = ["name", "project", "description", "memory_mb", "vcpus", "architecture", "storage_pool", "os_type", "os_variant",
                  "uefi", "secure_boot", "tpm", "iso", "graphics_type", "max_memory_mb", "max_vcpus"]  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        formsets = TemplateRowsFormSet.of(self.instance)
        rows_valid = all([formset.is_valid() for formset in formsets.values()])
        if self.errors or not rows_valid:
            return data
        disk_rows, nic_rows = _kept_rows(formsets.get("disks")), _kept_rows(formsets.get("nics"))
        values = _template_data(
            data,
            disks=tuple(_disk_request(row.cleaned_data) for row in disk_rows) if "disks" in formsets else _stored(self.instance).disks,
            networks=tuple(_nic_request(row.cleaned_data) for row in nic_rows) if "nics" in formsets else _stored(self.instance).networks,
        )
        values = dataclasses.replace(values, cloud_init=_stored(self.instance).cloud_init)  # cloud-init defaults: kept (API only)
        try:
            if self.instance.pk is None:
                self.created = template_services.template_create(data=values, actor=self.actor)
            else:
                template_services.template_update(template=self.instance, data=values, actor=self.actor)
        except VaporError as exc:
            shown = {"disks": ("disks", disk_rows, {"size": "size_gb"}), "networks": ("nics", nic_rows, {})}
            rows = {key: ErrorRows(formsets[prefix], kept, aliases) for key, (prefix, kept, aliases) in shown.items() if prefix in formsets}
            show_service_error(exc, self, aliases=TEMPLATE_FIELDS, rows=rows)
        return data


def _stored(template: VmTemplate) -> template_services.TemplateData:
    """The template as stored, for rows the page does not show (an inline the user may not view): they are kept."""
    return template_services.template_data(template) if template.pk else template_services.TemplateData(name="")


def _template_data(
    values: dict[str, Any], disks: tuple[DiskRequest, ...], networks: tuple[NicRequest, ...]
) -> template_services.TemplateData:
    iso = values.get("iso")
    return template_services.TemplateData(
        name=values.get("name") or "",
        description=values.get("description") or "",
        memory=values.get("memory_mb") or 0,
        vcpus=values.get("vcpus") or 0,
        max_memory=values.get("max_memory_mb"),
        max_vcpus=values.get("max_vcpus"),
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
        networks=networks,
        project=values["project"].name if values.get("project") else None,
    )


TEMPLATE_FIELDS = {"memory": "memory_mb", "max_memory": "max_memory_mb"}  # the service's field -> the template form's


def _kept_rows(formset: Any) -> list[forms.BaseForm]:
    """The rows to store, in their `order` (the service numbers them 0, 1, ... in this order)."""
    if formset is None:
        return []
    rows = [f for f in formset.forms if f.cleaned_data and not f.cleaned_data.get("DELETE")]
    return sorted(rows, key=lambda f: f.cleaned_data.get("order") or 0)


def _disk_request(row: dict[str, Any]) -> DiskRequest:
    return DiskRequest(
        size=row.get("size_gb"),
        clone_from=row.get("clone_from") or None,
        source_format=row.get("source_format") or None,
        linked=bool(row.get("linked")),
        format=row.get("format") or "qcow2",
        bus=row.get("bus") or "virtio",
        boot_order=row.get("boot_order"),
    )


def _nic_request(row: dict[str, Any]) -> NicRequest:
    return NicRequest(type=row.get("type") or "nat", source=row.get("source") or "default", model=row.get("model") or "virtio")


class TemplateRowsFormSet(forms.BaseInlineFormSet):
    """A template's disk or NIC rows. They are checked and stored by the template service together
    with the template (`TemplateAdminForm.clean`), never saved by the formset itself.

    The admin makes the page's form first and then the formsets, all around one template
    instance: each formset registers itself on that instance so that the form can find them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        vars(self.instance).setdefault("_admin_formsets", {})[self.prefix] = self

    @staticmethod
    def of(template: VmTemplate) -> dict[str, TemplateRowsFormSet]:
        """The formsets registered on `template`, by prefix ("disks", "nics")."""
        return vars(template).get("_admin_formsets", {})


class AddedRowForm(forms.ModelForm):
    """A row added with "Add another" counts even if it keeps every default
    (there are no blank extra rows: `extra = 0`)."""

    def has_changed(self) -> bool:
        return True if self.instance.pk is None else super().has_changed()


class TemplateDiskInline(admin.TabularInline):
    form = AddedRowForm
    model = TemplateDisk
    formset = TemplateRowsFormSet
    extra = 0
    fields = ["order", "size_gb", "clone_from", "source_format", "linked", "format", "bus", "boot_order"]


class TemplateNicInline(admin.TabularInline):
    model = TemplateNic
    form = AddedRowForm
    formset = TemplateRowsFormSet
    extra = 0
    fields = ["order", "type", "source", "model"]


@admin.register(VmTemplate)
class VmTemplateAdmin(ProjectScopedAdmin, ServiceSavedAdmin):
    form = TemplateAdminForm
    list_display = [
        "name",
        "project",
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
    list_filter = [("project", admin.RelatedOnlyFieldListFilter), "uefi", "os_type", "architecture"]
    search_fields = ["name", "description", "os_variant"]
    autocomplete_fields = ["iso"]
    inlines = [TemplateDiskInline, TemplateNicInline]
    fieldsets = [
        (None, {"fields": ["name", "project", "description"]}),
        ("Hardware", {"fields": ["memory_mb", "max_memory_mb", "vcpus", "max_vcpus", "architecture", "storage_pool"]}),
        ("OS and firmware", {"fields": ["os_type", "os_variant", "uefi", "secure_boot", "tpm"]}),
        ("Install media and console", {"fields": ["iso", "graphics_type"]}),
    ]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        base = super().get_form(request, obj, change=change, **kwargs)
        form: Any = type(base.__name__, (base,), {"actor": admin_actor(request)})  # the metaclass makes the fields anew: change them after
        if "project" in form.base_fields:
            field = form.base_fields["project"]
            field.queryset = project_choices(request)
            field.required = False
            field.help_text = "Who sees it and may use it. Empty: default (or your only project)."
        return form

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

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """Nothing to write (the service stored the rows with the template): only note what changed, for the history."""
        formset.save(commit=False)

    def delete_through_service(self, request: HttpRequest, obj: VmTemplate) -> None:
        template_services.template_delete(template=obj, actor=admin_actor(request))
