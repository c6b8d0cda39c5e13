"""The admin's "Create virtual machine" page.

Everything create-enhanced offers, as a form with rows of disks and NICs, an
ISO picker that searches the library, a template picker that fills the form
in, and a dry run that shows the plan and the domain XML. It builds the same
`VmRequest` as the API and calls the same service; the service's errors are
put on the field (or row) they name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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

from guestos import osinfo
from guestos.choices import OsType
from isos.choices import Architecture, BootType, IsoStatus
from isos.models import IsoImage
from projects.admin_scoping import admin_actor, project_choices
from projects.models import Project
from vaporsite.admin_support import ErrorRows, show_service_error
from vaporsite.errors import VaporError
from vms.choices import DiskBus, DiskFormat, GraphicsType, NicModel, NicType
from vms.models import CdromAttachment, Host, VirtualMachine, VmTemplate
from vms.selectors import HostOffer, host_offer, placement_offer, template_list
from vms.services import lifecycle as services
from vms.services.lifecycle import DryRun
from vms.services.placement import unavailable_reason
from vms.services.requests import CloudInitRequest, DiskRequest, GraphicsRequest, NicRequest, VmRequest
from vms.services.templates import template_data
from vms.services.validation import boot_mismatch

PICKER_LIMIT = 20
BOOT_WORDS: dict[str, str] = {
    BootType.BIOS: "BIOS boot",
    BootType.UEFI: "UEFI boot",
    BootType.HYBRID: "BIOS + UEFI boot",
    BootType.NONE: "not bootable",
    BootType.UNKNOWN: "boot not inspected",
}


def iso_label(iso: IsoImage) -> str:
    """How the picker shows an ISO: name, status, OS, boot type and size."""
    os_text = iso.os_variant or (iso.get_os_type_display() if iso.os_type else "OS unknown")
    size = filesizeformat(iso.size) if iso.size else "size unknown"  # as the ISO list shows it
    boot = BOOT_WORDS.get(iso.boot_type, iso.boot_type)
    return f"{iso.name} — {iso.get_status_display()} · {os_text} · {boot} · {size}"


class IsoChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return iso_label(obj)


class IsoPicker(AutocompleteSelect):
    """The admin's select2 search box, fed by `iso_picker_view` (status and OS in each line)."""

    def get_url(self) -> str:
        return reverse("admin:vms_virtualmachine_iso_picker")


def _page_number(request: HttpRequest) -> int:
    try:
        return max(1, int(request.GET.get("page", "1")))
    except ValueError:
        return 1


def iso_picker_view(request: HttpRequest) -> JsonResponse:
    """The create page's select2 searches: the ISO library, or osinfo-db for `field_name=os_variant`.

    ISOs: not-ready ones shown but not selectable, each with its boot type
    (the page warns when it does not fit the firmware).
    """
    if request.GET.get("field_name") == OS_VARIANT_FIELD:
        return os_variant_results(request)
    if not request.user.has_perm("isos.view_isoimage"):
        raise PermissionDenied
    term = request.GET.get("term", "").strip()
    page = _page_number(request)
    isos = IsoImage.objects.order_by("name")
    for word in term.split():
        isos = isos.filter(
            Q(name__icontains=word) | Q(os_variant__icontains=word) | Q(volume_label__icontains=word) | Q(path__icontains=word) | Q(pk=word)
        )
    start = (page - 1) * PICKER_LIMIT
    found = list(isos[start : start + PICKER_LIMIT + 1])
    results = [
        {"id": iso.pk, "text": iso_label(iso), "disabled": iso.status != IsoStatus.READY, "boot_type": iso.boot_type}
        for iso in found[:PICKER_LIMIT]
    ]
    return JsonResponse({"results": results, "pagination": {"more": len(found) > PICKER_LIMIT}})


OS_VARIANT_FIELD = "os_variant"


def os_variant_label(short_id: str, name: str) -> str:
    return f"{short_id} — {name}" if name and name != short_id else short_id


def os_variant_results(request: HttpRequest) -> JsonResponse:
    """osinfo-db's short ids whose id or name holds every word typed ("ubu" -> ubuntu24.04, ubuntu22.04, ...)."""
    if not request.user.has_perm("vms.add_virtualmachine"):
        raise PermissionDenied
    page = _page_number(request)
    found = osinfo.search(request.GET.get("term", ""), limit=page * PICKER_LIMIT + 1)
    shown = found[(page - 1) * PICKER_LIMIT : page * PICKER_LIMIT]
    results = [{"id": v.short_id, "text": os_variant_label(v.short_id, v.name)} for v in shown]
    return JsonResponse({"results": results, "pagination": {"more": len(found) > page * PICKER_LIMIT}})


class OsVariantPicker(forms.Select):
    """A select2 search box over osinfo-db (served by `iso_picker_view` with field_name=os_variant).

    Only the current value is rendered as an option; a value osinfo-db does
    not know (a template's, a typed one) is kept so the service's error names it.
    """

    def build_attrs(self, base_attrs: dict[str, Any], extra_attrs: dict[str, Any] | None = None) -> dict[str, Any]:
        attrs = super().build_attrs(base_attrs, extra_attrs)
        attrs.update(
            {
                "class": "admin-autocomplete",
                "data-ajax--cache": "true",
                "data-ajax--delay": 150,
                "data-ajax--type": "GET",
                "data-ajax--url": reverse("admin:vms_virtualmachine_iso_picker"),
                "data-app-label": "vms",
                "data-model-name": "virtualmachine",
                "data-field-name": OS_VARIANT_FIELD,
                "data-theme": "admin-autocomplete",
                "data-allow-clear": "true",
                "data-placeholder": "Search osinfo-db: ubuntu, debian 12, windows 11 …",
            }
        )
        return attrs

    def optgroups(self, name: str, value: list[Any], attrs: dict[str, Any] | None = None) -> list[Any]:
        current = [str(v) for v in value if v]
        names = {v.short_id: v.name for v in osinfo.search(current[0], limit=50)} if current else {}
        labels = [(v, os_variant_label(v, names[v]) if v in names else f"{v} (not in osinfo-db)") for v in current]
        self.choices = [("", ""), *labels]
        return super().optgroups(name, value, attrs)


class HostSelect(forms.Select):
    """A choice of what the host has; a value it does not offer (a template's, a typed one) stays shown, marked."""

    def __init__(self, *args: Any, withheld: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.withheld = withheld  # on the host but not open to the user's projects

    def optgroups(self, name: str, value: list[Any], attrs: dict[str, Any] | None = None) -> list[Any]:
        known = {str(choice) for choice, _label in self.choices}
        missing = [str(v) for v in value if v and str(v) not in known]
        if missing:
            why = {v: "not open to your projects" if v in self.withheld else "not on this host" for v in missing}
            self.choices = [*self.choices, *((v, f"{v} ({why[v]})") for v in missing)]
        return super().optgroups(name, value, attrs)


@dataclass(frozen=True)
class HostChoices:
    """The host's pools, networks and bridges as choices, built once per page and shared by every row."""

    pools: list[tuple[str, str]] = field(default_factory=list)
    pool_room: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> available, capacity (bytes)
    sources: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # NIC type -> (name, label)
    withheld: dict[str, frozenset[str]] = field(default_factory=dict)  # "pool"/NIC type -> names not open to the user's projects
    error: str = ""

    @property
    def readable(self) -> bool:
        return not self.error


def open_to(projects: Any) -> dict[str, set[str] | None]:
    """What the user's projects (those they may create in) open to them, per kind: None is "anything".

    A project without a list for a kind allows every name of it; the service
    checks the project the VM lands in (`check_allowed`), this only trims the lists.
    """
    found: dict[str, set[str] | None] = {"pool": set(), "network": set(), "bridge": set()}
    for project in projects:
        for kind, names in (("pool", project.pools), ("network", project.networks), ("bridge", project.bridges)):
            if not names:
                found[kind] = None
            elif found[kind] is not None:
                found[kind] |= set(names)  # type: ignore[operator]
    return found


def host_choices(offer: HostOffer, allowed: dict[str, set[str] | None] | None = None) -> HostChoices:
    """The host's lists as choices, trimmed to what `allowed` (see `open_to`) opens; the rest is `withheld`."""
    if offer.error:
        return HostChoices(error=offer.error)
    allowed = allowed or {}

    def keep(kind: str, name: str) -> bool:
        names = allowed.get(kind)
        return names is None or name in names

    pools = []
    for pool in offer.pools:
        label = f"{pool.name} — {filesizeformat(pool.available)} free of {filesizeformat(pool.capacity)}"
        label += f" · {pool.type}" if pool.type else ""
        label += "" if pool.active else " · inactive"
        pools.append((pool.name, label))
    networks = []
    of_network = {}
    for network in offer.networks:
        label = f"{network.name} — {network.forward_mode or 'isolated'}"
        label += f" {network.cidr}" if network.cidr else ""
        label += "" if network.active else " · inactive"
        networks.append((network.name, label))
        if network.bridge:
            of_network[network.bridge] = network.name
    bridges = [(name, f"{name} — bridge of network {of_network[name]}" if name in of_network else name) for name in offer.bridges]
    lists = {"pool": pools, NicType.NAT.value: networks, NicType.BRIDGE.value: bridges}
    kinds = {"pool": "pool", NicType.NAT.value: "network", NicType.BRIDGE.value: "bridge"}
    shown = {key: [(n, label) for n, label in choices if keep(kinds[key], n)] for key, choices in lists.items()}
    withheld = {key: frozenset(n for n, _ in choices if not keep(kinds[key], n)) for key, choices in lists.items()}
    return HostChoices(
        pools=shown["pool"],
        pool_room={p.name: {"available": p.available, "capacity": p.capacity} for p in offer.pools if keep("pool", p.name)},
        sources={NicType.NAT.value: shown[NicType.NAT.value], NicType.BRIDGE.value: shown[NicType.BRIDGE.value]},
        withheld=withheld,
    )


AUTOMATIC = "(automatic placement)"


def host_label(host: Host) -> str:
    """A host in the Host select: its name and, when placement would not use it, why."""
    reason = unavailable_reason(host)
    return f"{host.name} — {reason}" if reason else host.name


def chosen_host(request: HttpRequest) -> Host | None:
    """The host the page asks about (POST or ?host=), None for automatic placement (or a name that is no host)."""
    name = (request.POST if request.method == "POST" else request.GET).get("host", "")
    return Host.objects.filter(name=name).first() if name else None


def page_offer(host: Host | None) -> HostOffer:
    """The lists the page offers: the chosen host's, or for automatic placement those of every host it may use."""
    if host is not None:
        return host_offer(host)
    return placement_offer([h for h in Host.objects.order_by("name") if not unavailable_reason(h)])


def code_box(label: str, rows: int, help_text: str) -> forms.CharField:
    """An optional text box for a document or keys: fixed-width, unspell-checked, taken as typed (not stripped)."""
    return forms.CharField(
        label=label,
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": rows, "class": "vapor-code", "spellcheck": "false"}),
        help_text=help_text,
    )


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
    max_memory = forms.IntegerField(
        label="Max memory (MB)",
        required=False,
        min_value=1,
        help_text="How far the memory may be raised later while the VM runs. Empty: the memory above (raise it only when stopped).",
    )
    vcpus = forms.IntegerField(label="vCPUs", initial=2, min_value=1)
    max_vcpus = forms.IntegerField(
        label="Max vCPUs",
        required=False,
        min_value=1,
        help_text="How many vCPUs may be added later while the VM runs. Empty: the vCPUs above.",
    )
    os_type = forms.ChoiceField(label="OS type", choices=[("", "(from the OS variant)"), *OsType.choices], required=False)
    os_variant = forms.CharField(
        label="OS variant",
        required=False,
        max_length=64,
        help_text="Type part of a name (ubu, debian 12, windows 11): the osinfo-db id is stored, e.g. ubuntu22.04.",
        widget=OsVariantPicker,
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
    storage_pool = forms.CharField(initial="default", max_length=64, help_text="Where the new disks and clones are made.")
    autostart = forms.BooleanField(label="Start with the host", required=False)
    host = forms.ChoiceField(
        required=False,
        choices=[("", AUTOMATIC)],
        help_text="Where the VM runs. Automatic: the host with the most memory left among those that have what it asks for.",
    )

    # First boot (cloud-init NoCloud): each field left empty is the template's, else Vapor's default.
    ci_enabled = forms.BooleanField(
        label="Give it a cloud-init seed",
        required=False,
        help_text="For cloud images: host name, SSH keys and first-boot settings on a CD-ROM labelled cidata. "
        "Filling in any field below ticks this.",
    )
    ci_hostname = forms.CharField(label="Host name", required=False, max_length=253, help_text="Empty: the template's, else the VM's name.")
    ci_ssh_keys = code_box(
        "SSH public keys",
        3,
        "One OpenSSH public key per line (ssh-ed25519 AAAA… comment). Empty: the template's, else those on your profile.",
    )
    ci_user_data = code_box(
        "User data",
        8,
        "A #cloud-config document or a #! script. It may hold secrets: stored encrypted, never logged, "
        "shown only to those who may change the VM. Empty: the template's.",
    )
    ci_network_config = code_box(
        "Network config",
        4,
        "cloud-init's network YAML, version 1 or 2. Empty: the template's, else cloud-init's own (DHCP on the first NIC).",
    )
    ci_meta_data = code_box("Meta data", 3, "A YAML mapping, merged under Vapor's instance-id and local-hostname. Empty: the template's.")

    def __init__(self, *args: Any, admin_site: admin.AdminSite, request: HttpRequest, host: HostChoices, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.fields["storage_pool"]
        if host.readable:
            pool.widget = HostSelect(choices=host.pools, withheld=host.withheld.get("pool", frozenset()), attrs={"data-vapor-pool": "1"})
            offered = [name for name, _label in host.pools]
            if offered and pool.initial not in offered:
                pool.initial = offered[0]  # "default" may be held back from the user's projects, or absent
        else:
            pool.help_text = f"The host's pools could not be read ({host.error}): type the pool's name."
        self.fields["host"].choices = [("", AUTOMATIC), *((h.name, host_label(h)) for h in Host.objects.order_by("name"))]  # type: ignore[attr-defined]
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

    def __init__(self, *args: Any, host: HostChoices | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if host is None or not host.readable:
            self.fields["source"].widget.attrs["placeholder"] = "network or bridge name"
            return
        kind = self.data.get(self.add_prefix("type")) if self.is_bound else None
        kind = kind or self.initial.get("type") or self.fields["type"].initial
        # The row's type decides the list: networks for NAT, bridges for a bridge (the page's script swaps them).
        offered = [name for name, _label in host.sources.get(str(kind), [])]
        if not self.is_bound and offered and self.initial.get("source") == DEFAULT_NIC["source"] and DEFAULT_NIC["source"] not in offered:
            self.initial = {**self.initial, "source": offered[0]}
        self.fields["source"].widget = HostSelect(
            choices=host.sources.get(str(kind), []), withheld=host.withheld.get(str(kind), frozenset()), attrs={"data-vapor-source": "1"}
        )


DEFAULT_NIC = {"type": NicType.NAT.value, "source": "default", "model": NicModel.VIRTIO.value}
DiskFormSet = formset_factory(DiskForm, extra=0, can_delete=True)
NicFormSet = formset_factory(NicForm, extra=0, can_delete=True)

MAIN_FIELDS = {"project", "iso_path", "secondary_iso", "name", "memory", "max_memory", "vcpus", "max_vcpus", "os_type", "os_variant",
               "architecture", "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "template", "host"}  # fmt: skip
GRAPHICS_FIELDS = {"graphics.type": "graphics_type", "graphics.port": "graphics_port", "graphics.password": "graphics_password"}
# The service's cloud_init fields -> the form's ("cloud_init.ssh_authorized_keys[2]" lands on the keys box, naming the line).
CLOUD_INIT_FIELDS = {
    "cloud_init": "ci_enabled",
    "cloud_init.hostname": "ci_hostname",
    "cloud_init.ssh_authorized_keys": "ci_ssh_keys",
    "cloud_init.user_data": "ci_user_data",
    "cloud_init.network_config": "ci_network_config",
    "cloud_init.meta_data": "ci_meta_data",
}
CLOUD_INIT_TEXTS = ("ci_hostname", "ci_ssh_keys", "ci_user_data", "ci_network_config", "ci_meta_data")


def _text(value: str | None) -> str | None:
    """A text box's value as the service takes it: browsers send CRLF line ends (fatal to a #! script); blank is not given."""
    text = (value or "").replace("\r\n", "\n").replace("\r", "\n")
    return text if text.strip() else None


def ssh_key_lines(value: str | None) -> list[str]:
    return [line.strip() for line in (value or "").replace("\r", "\n").split("\n") if line.strip()]


def cloud_init_from_form(data: dict[str, Any]) -> CloudInitRequest | None:
    """The page's cloud-init fields as the API's `cloud_init` object: None when the box is unticked and every field
    empty (the template's defaults, if any, then apply whole); else only what was filled in overrides them."""
    texts = {name: _text(data.get(name)) for name in CLOUD_INIT_TEXTS}
    if not data.get("ci_enabled") and not any(texts.values()):
        return None
    keys = ssh_key_lines(data.get("ci_ssh_keys"))
    hostname = texts["ci_hostname"]
    return CloudInitRequest(
        user_data=texts["ci_user_data"],
        ssh_authorized_keys=tuple(keys) if keys else None,
        hostname=hostname.strip() if hostname else None,
        network_config=texts["ci_network_config"],
        meta_data=texts["ci_meta_data"],
    )


def template_cloud_init_note(template: VmTemplate | None) -> str:
    """What a template's cloud-init defaults set (never their values: user_data may hold secrets), for the page's fieldset."""
    if template is None:
        return ""
    defaults = template_data(template).cloud_init
    if defaults is None:
        return ""
    parts = [
        what
        for what, present in (
            ("user data", defaults.user_data is not None),
            (f"{len(defaults.ssh_authorized_keys or ())} SSH key(s)", bool(defaults.ssh_authorized_keys)),
            (f"host name {defaults.hostname}", bool(defaults.hostname)),
            ("network config", defaults.network_config is not None),
            ("meta data", defaults.meta_data is not None),
        )
        if present
    ]
    what = ", ".join(parts) if parts else "a seed with Vapor's defaults"
    return f"Template {template.name} gives its VMs a cloud-init seed ({what}); the fields you fill in here replace its, one by one."


def template_initial(template: VmTemplate) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The form's, the disk rows' and the NIC rows' values from a template."""
    data = template_data(template)
    main = {
        "template": template.name,
        "project": template.project.name,
        "prefilled_from": template.name,
        "memory": data.memory,
        "max_memory": data.max_memory,
        "vcpus": data.vcpus,
        "max_vcpus": data.max_vcpus,
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
        max_memory=data.get("max_memory"),
        max_vcpus=data.get("max_vcpus"),
        cloud_init=cloud_init_from_form(data),
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
        host=data.get("host") or None,
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
    key = re.fullmatch(r"cloud_init\.ssh_authorized_keys\[(\d+)\]", exc.field or "")
    if key is not None:  # the Nth key given is the Nth non-blank line of the box
        form.add_error("ci_ssh_keys", f"Line {int(key.group(1)) + 1}: {exc.message}")
        return
    show_service_error(exc, form, aliases={**GRAPHICS_FIELDS, **CLOUD_INIT_FIELDS}, rows=rows)


def host_lists(host: HostChoices) -> dict[str, Any]:
    """What the page's script needs to swap its lists when the Host select changes (`?host=NAME&lists=1`)."""
    return {"pools": host.pools, "pool_room": host.pool_room, "sources": host.sources, "error": host.error}


def create_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not model_admin.has_add_permission(request):
        raise PermissionDenied
    site = model_admin.admin_site
    preview: DryRun | None = None
    # One read of the host for the whole page, every row shares it; trimmed to what the user's projects open.
    host = host_choices(page_offer(chosen_host(request)), open_to(project_choices(request)))
    if request.method == "GET" and request.GET.get("lists"):
        return JsonResponse(host_lists(host))
    if request.method == "POST":
        form = VmCreateForm(request.POST, admin_site=site, request=request, host=host)
        disk_formset = DiskFormSet(request.POST, prefix="disks")
        nic_formset = NicFormSet(request.POST, prefix="networks", form_kwargs={"host": host})
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
        form = VmCreateForm(initial=initial, admin_site=site, request=request, host=host)
        disk_formset = DiskFormSet(initial=disk_rows, prefix="disks")
        nic_formset = NicFormSet(initial=nic_rows, prefix="networks", form_kwargs={"host": host})
    summary = error_summary(form, disk_formset, nic_formset)
    errors = len(summary)
    picked = template_list(request.user).filter(name=form["template"].value() or "").first()
    cloud_init_note = template_cloud_init_note(picked)
    context = {
        **site.each_context(request),
        "title": "Create virtual machine",
        "opts": VirtualMachine._meta,
        "form": form,
        "disk_formset": disk_formset,
        "nic_formset": nic_formset,
        "preview": preview,
        "error_count": errors,
        "error_note": ngettext("Please correct the error below:", "Please correct the errors below:", errors),
        "error_summary": summary,
        "host": host,
        "page_data": {
            "sources": host.sources,
            "pools": host.pool_room,
            "boot": {kind: boot_mismatch(kind, uefi) for kind, uefi in (("none", False), ("bios", True), ("uefi", False))},
        },
        "iso_boot": _chosen_boot(form),
        "media": model_admin.media + form.media,
        "has_view_permission": model_admin.has_view_permission(request),
        "main_fields": MAIN_FIELDS,
        "cloud_init_note": cloud_init_note,
        "cloud_init_open": bool(cloud_init_note)
        or any(form[name].errors or form[name].value() for name in ("ci_enabled", *CLOUD_INIT_TEXTS)),
    }
    return render(request, "admin/vms/virtualmachine/create.html", context)


def _chosen_boot(form: VmCreateForm) -> dict[str, str]:
    """The install ISO the form holds now: its boot type and, if it will not boot this VM, why (shown without JavaScript too)."""
    value = form["iso_path"].value()
    iso = IsoImage.objects.filter(pk=value).only("boot_type", "name").first() if value else None
    if iso is None:
        return {"boot_type": "", "warning": ""}
    uefi = bool(form["uefi"].value())
    mismatch = boot_mismatch(iso.boot_type, uefi)
    return {"boot_type": iso.boot_type, "warning": f"This ISO {mismatch}." if mismatch else ""}


def error_summary(form: VmCreateForm, disk_formset: Any, nic_formset: Any) -> list[str]:
    """Every error of the page in one list, for the note at its top ("Disk 1 · Size (GB): ...")."""
    lines = [str(message) for message in form.non_field_errors()]
    for name, messages_ in form.errors.items():
        if name != "__all__":
            lines += [f"{form[name].label}: {message}" for message in messages_]
    for what, formset in (("Disk", disk_formset), ("Network interface", nic_formset)):
        lines += [f"{what}s: {message}" for message in formset.non_form_errors()]
        for index, row in enumerate(formset.forms):
            for name, messages_ in row.errors.items():
                label = "" if name == "__all__" else f" · {row[name].label}"
                lines += [f"{what} {index}{label}: {message}" for message in messages_]
    return lines
