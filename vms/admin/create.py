"""The admin's "Create virtual machine" page.

Everything create-enhanced offers, as a form with rows of disks and NICs, an
ISO picker that searches the library, a template picker that fills the form
in, and a dry run that shows the plan and the domain XML. It builds the same
`VmRequest` as the API and calls the same service; the service's errors are
put on the field (or row) they name.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import AutocompleteSelect
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.forms import formset_factory
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.translation import ngettext

from guestos.choices import OsType
from isos.choices import Architecture, IsoStatus
from isos.models import IsoImage
from projects.admin_scoping import admin_actor, project_choices
from projects.models import Project
from vaporsite.admin_support import ErrorRows, show_service_error
from vaporsite.errors import VaporError
from vms.choices import DiskBus, DiskFormat, GraphicsType, NicModel, NicType
from vms.models import CdromAttachment, VirtualMachine, VmTemplate
from vms.selectors import template_list
from vms.services import lifecycle as services
from vms.services.lifecycle import DryRun
from vms.services.requests import DiskRequest, GraphicsRequest, NicRequest, VmRequest
from vms.services.templates import template_data

PICKER_LIMIT = 20


def iso_label(iso: IsoImage) -> str:
    """How the picker shows an ISO: name, status, OS and size."""
    os_text = iso.os_variant or iso.get_os_type_display() or "OS unknown"
    size = filesizeformat(iso.size) if iso.size else "size unknown"  # as the ISO list shows it
    return f"{iso.name} — {iso.get_status_display()} · {os_text} · {size}"


class IsoChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return iso_label(obj)


class IsoPicker(AutocompleteSelect):
    """The admin's select2 search box, fed by `iso_picker_view` (status and OS in each line)."""

    def get_url(self) -> str:
        return reverse("admin:vms_virtualmachine_iso_picker")


def iso_picker_view(request: HttpRequest) -> JsonResponse:
    """Search the library for the picker: select2's JSON, not-ready ISOs shown but not selectable."""
    if not request.user.has_perm("isos.view_isoimage"):
        raise PermissionDenied
    term = request.GET.get("term", "").strip()
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    isos = IsoImage.objects.order_by("name")
    for word in term.split():
        isos = isos.filter(
            Q(name__icontains=word) | Q(os_variant__icontains=word) | Q(volume_label__icontains=word) | Q(path__icontains=word) | Q(pk=word)
        )
    start = (page - 1) * PICKER_LIMIT
    found = list(isos[start : start + PICKER_LIMIT + 1])
    results = [{"id": iso.pk, "text": iso_label(iso), "disabled": iso.status != IsoStatus.READY} for iso in found[:PICKER_LIMIT]]
    return JsonResponse({"results": results, "pagination": {"more": len(found) > PICKER_LIMIT}})


class VmCreateForm(forms.Form):
    project = forms.ModelChoiceField(
        queryset=Project.objects.none(),
        required=False,
        to_field_name="name",
        help_text="Where the VM belongs: who sees it and whose quota it uses. Empty: the template's, else default.",
    )
    template = forms.ModelChoiceField(
        queryset=VmTemplate.objects.all(),
        required=False,
        to_field_name="name",
        help_text="Choosing one fills the form in with its values; anything you change here wins.",
    )
    prefilled_from = forms.CharField(required=False, widget=forms.HiddenInput)
    name = forms.CharField(max_length=64, help_text="Letters, digits, '-', '_' and '.'; the libvirt domain's name.")
    memory = forms.IntegerField(label="Memory (MB)", initial=2048, min_value=1)
    vcpus = forms.IntegerField(label="vCPUs", initial=2, min_value=1)
    os_type = forms.ChoiceField(label="OS type", choices=[("", "(from the OS variant)"), *OsType.choices], required=False)
    os_variant = forms.CharField(
        label="OS variant", required=False, max_length=64, help_text="osinfo-db short id, e.g. ubuntu22.04, win11."
    )
    architecture = forms.ChoiceField(choices=Architecture.choices, initial=Architecture.X86_64)
    iso_path = IsoChoiceField(queryset=IsoImage.objects.all(), required=False, label="Install ISO")
    secondary_iso = IsoChoiceField(queryset=IsoImage.objects.all(), required=False, label="Driver ISO")
    uefi = forms.BooleanField(label="UEFI", required=False)
    secure_boot = forms.BooleanField(label="Secure Boot", required=False, help_text="Needs UEFI.")
    tpm = forms.BooleanField(label="TPM 2.0", required=False)
    graphics_type = forms.ChoiceField(label="Console", choices=GraphicsType.choices, initial=GraphicsType.VNC)
    graphics_port = forms.IntegerField(label="Console port", initial=-1, help_text="-1: libvirt picks a free one.")
    graphics_password = forms.CharField(
        label="VNC password", required=False, max_length=64, widget=forms.PasswordInput(render_value=False), help_text="1-8 characters."
    )
    storage_pool = forms.CharField(initial="default", max_length=64)
    autostart = forms.BooleanField(label="Start with the host", required=False)

    def __init__(self, *args: Any, admin_site: admin.AdminSite, request: HttpRequest, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = project_choices(request)  # type: ignore[attr-defined]
        self.fields["template"].queryset = template_list(request.user)  # type: ignore[attr-defined]
        iso_field = CdromAttachment._meta.get_field("iso")
        for name in ("iso_path", "secondary_iso"):
            self.fields[name].widget = IsoPicker(iso_field, admin_site, choices=self.fields[name].widget.choices)
        self.fields["template"].widget.attrs["data-vapor-template-picker"] = "1"


class DiskForm(forms.Form):
    size = forms.IntegerField(label="Size (GB)", required=False, min_value=1)
    path = forms.CharField(label="Existing file", required=False, max_length=4096)
    clone_from = forms.CharField(label="Clone from", required=False, max_length=4096)
    linked = forms.BooleanField(label="Linked", required=False)
    source_format = forms.ChoiceField(label="Source format", choices=[("", "-"), *DiskFormat.choices], required=False)
    format = forms.ChoiceField(choices=DiskFormat.choices, initial=DiskFormat.QCOW2)
    bus = forms.ChoiceField(choices=DiskBus.choices, initial=DiskBus.VIRTIO)
    boot_order = forms.IntegerField(label="Boot order", required=False, min_value=1)
    readonly = forms.BooleanField(label="Read-only", required=False)


class NicForm(forms.Form):
    type = forms.ChoiceField(choices=NicType.choices, initial=NicType.NAT)
    source = forms.CharField(max_length=64, initial="default", help_text="libvirt network (NAT) or host bridge.")
    model = forms.ChoiceField(choices=NicModel.choices, initial=NicModel.VIRTIO)


DEFAULT_NIC = {"type": NicType.NAT.value, "source": "default", "model": NicModel.VIRTIO.value}
DiskFormSet = formset_factory(DiskForm, extra=0, can_delete=True)
NicFormSet = formset_factory(NicForm, extra=0, can_delete=True)

MAIN_FIELDS = {"project", "iso_path", "secondary_iso", "name", "memory", "vcpus", "os_type", "os_variant", "architecture",
               "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "template"}  # fmt: skip
GRAPHICS_FIELDS = {"graphics.type": "graphics_type", "graphics.port": "graphics_port", "graphics.password": "graphics_password"}


def template_initial(template: VmTemplate) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The form's, the disk rows' and the NIC rows' values from a template."""
    data = template_data(template)
    main = {
        "template": template.name,
        "project": template.project.name,
        "prefilled_from": template.name,
        "memory": data.memory,
        "vcpus": data.vcpus,
        "os_type": data.os_type,
        "os_variant": data.os_variant,
        "architecture": data.architecture,
        "iso_path": template.iso_id,
        "uefi": data.uefi,
        "secure_boot": data.secure_boot,
        "tpm": data.tpm,
        "graphics_type": data.graphics_type,
        "storage_pool": data.storage_pool or "default",
    }
    disks = [
        {"size": d.size, "clone_from": d.clone_from or "", "linked": d.linked, "source_format": d.source_format or "",
         "format": d.format, "bus": d.bus, "boot_order": d.boot_order}
        for d in data.disks
    ]  # fmt: skip
    nics = [{"type": n.type, "source": n.source, "model": n.model} for n in data.networks] or [DEFAULT_NIC]
    return main, disks, nics


def _kept(formset: Any) -> list[tuple[int, dict[str, Any]]]:
    """(row index, values) of the rows that describe something and are not marked for deletion."""
    rows = []
    for index, form in enumerate(formset.forms):
        values = form.cleaned_data
        if not values or values.get("DELETE") or (not form.has_changed() and index >= formset.initial_form_count()):
            continue
        rows.append((index, values))
    return rows


def build_request(form: VmCreateForm, disks: list[dict[str, Any]], nics: list[dict[str, Any]]) -> VmRequest:
    data = form.cleaned_data
    template = data.get("template")
    return VmRequest(
        name=data["name"],
        memory=data["memory"],
        vcpus=data["vcpus"],
        disks=tuple(
            DiskRequest(
                size=d.get("size"),
                path=d.get("path") or None,
                clone_from=d.get("clone_from") or None,
                linked=bool(d.get("linked")),
                source_format=d.get("source_format") or None,
                format=d["format"],
                bus=d["bus"],
                boot_order=d.get("boot_order"),
                readonly=bool(d.get("readonly")),
            )
            for d in disks
        ),
        iso_path=data["iso_path"].pk if data.get("iso_path") else None,
        secondary_iso=data["secondary_iso"].pk if data.get("secondary_iso") else None,
        os_type=data.get("os_type") or "",
        os_variant=data.get("os_variant") or "",
        architecture=data["architecture"],
        uefi=data["uefi"],
        secure_boot=data["secure_boot"],
        tpm=data["tpm"],
        networks=tuple(NicRequest(type=n["type"], source=n["source"], model=n["model"]) for n in nics),
        graphics=GraphicsRequest(type=data["graphics_type"], port=data["graphics_port"], password=data.get("graphics_password") or None),
        storage_pool=data["storage_pool"],
        autostart=data["autostart"],
        # The form was filled in from the template: everything is spelled out, the template is only recorded.
        template=template.name if template else None,
        project=data["project"].name if data.get("project") else None,
        given=None,
    )


def place_error(
    exc: VaporError, form: VmCreateForm, disk_formset: Any, nic_formset: Any, disk_rows: list[int], nic_rows: list[int]
) -> None:
    """Show a service error on the field or row it names (e.g. "disks.1.size" -> the second disk row's size)."""
    rows = {
        "disks": ErrorRows(disk_formset, [disk_formset.forms[index] for index in disk_rows]),
        "networks": ErrorRows(nic_formset, [nic_formset.forms[index] for index in nic_rows]),
    }
    show_service_error(exc, form, aliases=GRAPHICS_FIELDS, rows=rows)


def create_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    site = model_admin.admin_site
    preview: DryRun | None = None
    if request.method == "POST":
        form = VmCreateForm(request.POST, admin_site=site, request=request)
        disk_formset = DiskFormSet(request.POST, prefix="disks")
        nic_formset = NicFormSet(request.POST, prefix="networks")
        template = request.POST.get("template", "")
        mine = template_list(request.user)
        if template and template != request.POST.get("prefilled_from", "") and mine.filter(name=template).exists():
            # A template was picked but the form was not filled in from it (no JavaScript): fill it in first.
            messages.info(request, f"The form was filled in from template {template}: check it and submit again.")
            return HttpResponseRedirect(f"{request.path}?template={template}")
        if form.is_valid() and disk_formset.is_valid() and nic_formset.is_valid():
            disks, nics = _kept(disk_formset), _kept(nic_formset)
            vm_request = build_request(form, [d for _, d in disks], [n for _, n in nics])
            dry_run = "_dryrun" in request.POST
            try:
                result = services.vm_create(request=vm_request, dry_run=dry_run, actor=admin_actor(request))
            except VaporError as exc:
                place_error(exc, form, disk_formset, nic_formset, [i for i, _ in disks], [i for i, _ in nics])
            else:
                if isinstance(result, DryRun):
                    preview = result
                else:
                    assert isinstance(result, VirtualMachine)
                    model_admin.log_addition(request, result, [{"added": {}}])
                    messages.success(request, f"VM {result.name} accepted: provisioning runs in the background; this page follows it.")
                    return HttpResponseRedirect(reverse("admin:vms_virtualmachine_change", args=[result.pk]))
    else:
        initial: dict[str, Any] = {}
        disk_rows: list[dict[str, Any]] = [{"size": 20}]
        nic_rows: list[dict[str, Any]] = [DEFAULT_NIC]
        mine = template_list(request.user)
        chosen = mine.filter(name=request.GET.get("template", "")).prefetch_related("disks", "nics").first()
        if chosen is not None:
            initial, disk_rows, nic_rows = template_initial(chosen)
        form = VmCreateForm(initial=initial, admin_site=site, request=request)
        disk_formset = DiskFormSet(initial=disk_rows, prefix="disks")
        nic_formset = NicFormSet(initial=nic_rows, prefix="networks")
    errors = sum(len(f.errors) for f in [form, *disk_formset.forms, *nic_formset.forms]) + len(disk_formset.non_form_errors())
    context = {
        **site.each_context(request),
        "title": "Create virtual machine",
        "opts": VirtualMachine._meta,
        "form": form,
        "disk_formset": disk_formset,
        "nic_formset": nic_formset,
        "preview": preview,
        "error_count": errors,
        "error_note": ngettext("Please correct the error below.", "Please correct the errors below.", errors),
        "media": model_admin.media + form.media,
        "has_view_permission": model_admin.has_view_permission(request),
        "main_fields": MAIN_FIELDS,
    }
    return render(request, "admin/vms/virtualmachine/create.html", context)
