"""VMs in the admin: the VM list (stored state, never a libvirt call per row),
the VM page as a control panel (Start, Shut down, Force off, Reboot and the
consoles as buttons, by state and permission; disks/NICs/CD-ROMs and the
event log; the domain XML, password masked), the delete confirmations that
name the domain and every file erased or kept (`vm_delete_plan`), lifecycle
and refresh actions, and the "Create virtual machine" page (`create.py`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from projects.admin_scoping import ProjectScopedAdmin, admin_actor
from vaporsite.admin_support import VaporModelAdmin
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.admin import addresses as admin_addresses
from vms.admin import create as admin_create
from vms.admin import migration as admin_migration  # several hosts: live migration
from vms.admin import snapshots as admin_snapshots  # day two: snapshots
from vms.admin.cloud_init import cloud_init_context
from vms.admin.disks import disk_urls, disks_context
from vms.admin.hardware import hardware_context, hardware_view
from vms.choices import VmStatus
from vms.consoles.views import can_watch_console, console_links
from vms.hypervisor.documents.domain import domain_xml
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services import lifecycle as services
from vms.services import states
from vms.services.design import domain_spec


class _ReadOnlyInline(admin.TabularInline):
    # Django's tabular inline with the row's __str__ ("web vda") left out: the columns say it all.
    template = "admin/vms/virtualmachine/change_form_inline.html"
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
    fields = ["at", "step", "status", "message", "user", "source_address"]
    readonly_fields = ["at"]
    verbose_name_plural = "event log"


# The lifecycle actions' labels, on the VM page's buttons and in the list's action menu.
POWER_LABELS = {"start": "Start", "stop": "Shut down", "force-stop": "Force off", "reboot": "Reboot"}


def _action(label: str, action: str) -> Callable[..., None]:
    def run(modeladmin: VirtualMachineAdmin, request: HttpRequest, queryset: QuerySet[VirtualMachine]) -> None:
        for vm in queryset:
            try:
                services.vm_action(vm=vm, action=action, actor=admin_actor(request))
                modeladmin.message_user(request, f"{label}: {vm.name}", messages.SUCCESS)
            except VaporError as exc:
                modeladmin.message_user(request, f"{vm.name}: {exc.message}", messages.ERROR)

    run.__name__ = f"action_{action.replace('-', '_')}"
    return admin.action(description=f"{label} the selected VMs", permissions=["change"])(run)


def _keep_disks(request: HttpRequest) -> bool:
    return request.POST.get("keep_disks", "") in {"on", "1", "true", "yes"}


@admin.action(description="Delete the selected VMs", permissions=["delete"])
def action_delete(modeladmin: VirtualMachineAdmin, request: HttpRequest, queryset: QuerySet[VirtualMachine]) -> HttpResponse | None:
    """First a page naming, for each selected VM, its domain and every file erased or kept (as the VM's own
    delete page does); deleted only when that page is confirmed (`post`), with its "Keep disks" choice."""
    if not queryset.exists():  # none of the selection is the user's to see
        modeladmin.message_user(request, "None of the selected VMs can be deleted here.", messages.WARNING)
        return None
    if request.POST.get("post") != "yes":
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": "Delete the selected virtual machines?",
            "opts": modeladmin.opts,
            "vms": (plans := [_delete_context(vm) for vm in queryset]),
            "refused": any(item["plan"].refusal for item in plans),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": modeladmin.media,
        }
        request.current_app = modeladmin.admin_site.name
        return TemplateResponse(request, "admin/vms/virtualmachine/delete_confirmation_selected.html", context)
    keep = _keep_disks(request)
    for vm in queryset:
        pk, name = vm.pk, vm.name
        try:
            plan = services.vm_delete(vm=vm, keep_disks=keep, actor=admin_actor(request))
        except VaporError as exc:
            modeladmin.message_user(request, f"VM {name} not deleted: {exc.message}", messages.ERROR)
            continue
        _log_deleted(request, pk, name)
        modeladmin.message_user(request, f"Delete: {name}; {_deleted_summary(plan)}", messages.SUCCESS)
    return None


def _delete_context(vm: VirtualMachine) -> dict[str, Any]:
    """The two plans a confirmation shows (the page's "Keep disks" box switches between them)."""
    return {"vm": vm, "plan": services.vm_delete_plan(vm=vm), "kept_plan": services.vm_delete_plan(vm=vm, keep_disks=True)}


def _deleted_summary(plan: services.DeletePlan) -> str:
    erased = f"{len(plan.erased)} file(s) erased" if plan.erased else "no file erased"
    return f"domain {plan.domain} undefined, {erased}, {len(plan.kept)} kept"


def _log_deleted(request: HttpRequest, pk: int, name: str) -> None:
    """The admin's history entry for a delete, written once the service has deleted the VM."""
    assert request.user.pk is not None  # the admin's views are for signed-in staff only
    LogEntry.objects.create(
        user_id=request.user.pk,
        content_type_id=ContentType.objects.get_for_model(VirtualMachine).pk,
        object_id=str(pk),
        object_repr=name[:200],
        action_flag=DELETION,
    )


@admin.action(description="Refresh state from the host", permissions=["change"])
def refresh_states(modeladmin: VirtualMachineAdmin, request: HttpRequest, queryset: QuerySet[VirtualMachine]) -> None:
    """One libvirt listing for every VM of the user's projects (the selection only says the operator asked)."""
    try:
        visible = None if request.user.is_superuser else list(modeladmin.get_queryset(request).values_list("pk", flat=True))
        count = states.vm_refresh_states(ids=visible)
    except VaporError as exc:
        modeladmin.message_user(request, f"Could not read the host: {exc.message}", messages.ERROR)
        return
    modeladmin.message_user(request, f"State read from the host for {count} VM(s).", messages.SUCCESS)


@admin.register(VirtualMachine)
class VirtualMachineAdmin(ProjectScopedAdmin, VaporModelAdmin):
    # Fits 1280 px beside the filters: status and live state in one column, memory and vCPUs in another.
    list_display = ["name", "placed", "status_badge", "size", "os", "checked"]
    # RelatedOnly: a filter lists only the projects and templates of the VMs the user sees.
    list_filter = [
        ("project", admin.RelatedOnlyFieldListFilter), ("host", admin.RelatedOnlyFieldListFilter), "status", "uefi", "os_type",
        ("template", admin.RelatedOnlyFieldListFilter), "storage_pool", "autostart",
    ]  # fmt: skip
    list_select_related = ["template", "project", "host"]
    search_fields = ["name", "uuid", "os_variant", "disks__path", "nics__mac"]
    actions = [
        *[_action(label, action) for action, label in POWER_LABELS.items()], action_delete, refresh_states,
    ]  # fmt: skip
    inlines = [DiskInline, CdromInline, NicInline, EventInline]
    readonly_fields = [
        "name", "project", "host", "uuid", "status", "error", "memory_mb", "vcpus", "os_type", "os_variant", "architecture", "virt_type",
        "machine", "max_memory_mb", "max_vcpus",
        "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "graphics_type", "graphics_port", "graphics_listen",
        "graphics_password_set", "disk_gb", "created_at", "template", "state", "state_checked_at", "console", "domain_xml_preview",
    ]  # fmt: skip

    def get_urls(self) -> list[Any]:
        own = [
            path("iso-picker/", self.admin_site.admin_view(admin_create.iso_picker_view), name="vms_virtualmachine_iso_picker"),
            path("<path:object_id>/action/<str:action>/", self.admin_site.admin_view(self.power_view), name="vms_virtualmachine_power"),
            *admin_addresses.addresses_urls(self),
            path(
                "<path:object_id>/hardware/", self.admin_site.admin_view(partial(hardware_view, self)), name="vms_virtualmachine_hardware"
            ),
            *admin_snapshots.snapshot_urls(self),  # day two: snapshots
            *disk_urls(self),  # day two: disks
            *admin_migration.migration_urls(self),  # several hosts: live migration
        ]
        return own + super().get_urls()

    def get_queryset(self, request: HttpRequest) -> QuerySet[VirtualMachine]:
        # the IP line and the host column: no query per row (list_select_related is ignored once the
        # project scoping has called select_related)
        return super().get_queryset(request).select_related("host").prefetch_related("nics")

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return admin_create.create_view(self, request)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Virtual machines", **(extra_context or {})})

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None) -> Any:
        # Nothing on the VM page is edited in place (changes are its buttons): no save buttons.
        extra = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False, **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra)

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], add: bool = False, change: bool = False, form_url: str = "", obj: Any = None
    ) -> Any:
        if obj is not None:
            # What the page is, not "Change virtual machine" (nothing is changed in a form here).
            context.update(title=f"Virtual machine: {obj.name}", subtitle=None)
            # The button bar above the page (change_form.html's object tools): power buttons, then the consoles.
            context["power_buttons"] = self.power_buttons(request, obj)
            context["console_links"] = console_links(request.user, obj)
            context.update(admin_addresses.addresses_context(self, request, obj))
            context.update(hardware_context(self, request, obj))  # day two: hardware
            context.update(admin_snapshots.snapshot_context(self, request, obj))  # day two: snapshots
            context["cloud_init"] = cloud_init_context(request, obj, can_change=self.has_change_permission(request, obj))  # day two
            context.update(disks_context(self, request, obj))  # day two: disks
            context.update(admin_migration.migration_context(self, request, obj))  # several hosts: live migration
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _missing(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """As Django's own views answer an id the user cannot see: a message, and to the admin's index."""
        self.message_user(request, f"There is no virtual machine with ID {object_id!r} here. Perhaps it was deleted?", messages.WARNING)
        return redirect("admin:index")

    def power_buttons(self, request: HttpRequest, obj: VirtualMachine) -> list[dict[str, str]]:
        """The lifecycle buttons the VM's state allows, for a user who may change it (an operator of its project)."""
        if not self.has_change_permission(request, obj):
            return []
        return [
            {"action": action, "label": POWER_LABELS[action], "url": reverse("admin:vms_virtualmachine_power", args=[obj.pk, action])}
            for action in services.vm_allowed_actions(vm=obj)
        ]

    def power_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        """A button of the VM page: POST only; one `vm_action`; a message, and back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if action not in POWER_LABELS:
            raise Http404(f"no action {action!r}")
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._missing(request, object_id)
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        label = POWER_LABELS[action]
        back = redirect("admin:vms_virtualmachine_change", obj.pk)
        if action not in services.vm_allowed_actions(vm=obj):
            self.message_user(request, f"{label} is not possible: VM {obj.name} is {obj.get_status_display().lower()}.", messages.WARNING)
            return back
        try:
            vm = services.vm_action(vm=obj, action=action, actor=admin_actor(request))
        except VaporError as exc:
            self.message_user(request, f"{label} refused: {exc.message}", messages.ERROR)
            return back
        done = {"stop": "the guest was asked to shut down", "reboot": "the guest was asked to reboot"}.get(action, f"now {vm.status}")
        self.message_user(request, f"{label}: {vm.name}, {done}.", messages.SUCCESS)
        return back

    def get_list_display(self, request: HttpRequest) -> Any:
        """A Console column, after the state, only for users who may open a console (it links running VMs only).
        The column is made per request: the ModelAdmin is shared by every request, the user is not."""
        columns = list(super().get_list_display(request))
        if not can_watch_console(request.user):
            return columns
        user = request.user

        @admin.display(description="Console")
        def console_link(obj: VirtualMachine) -> str:
            links = console_links(user, obj)
            if not links:
                return ""
            short = {"Console": "screen", "Serial console": "serial"}
            # One under the other: the column stays narrow enough for the list to fit 1280 px.
            pairs = ((url, short[label]) for label, url in links)
            return format_html_join(mark_safe("<br>"), '<a href="{}" class="vapor-console-link">{}</a>', pairs)

        return [*columns[:3], console_link, *columns[3:]]

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # Vapor's delete also removes the domain and volumes
        return actions

    def get_fieldsets(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return [
            (
                None,
                {"fields": ["name", "project", "host", "uuid", "status", "state", "state_checked_at", "error", "template", "created_at"]},
            ),
            (
                "Hardware",
                {
                    "fields": [
                        "memory_mb",
                        "max_memory_mb",
                        "vcpus",
                        "max_vcpus",
                        "disk_gb",
                        "architecture",
                        "virt_type",
                        "machine",
                        "storage_pool",
                        "autostart",
                    ]
                },
            ),
            ("OS and firmware", {"fields": ["os_type", "os_variant", "uefi", "secure_boot", "tpm"]}),
            # `console` says where it listens and on which port (the live one, or "assigned at start"): no raw -1.
            ("Console", {"fields": ["console", "graphics_password_set"]}),
            ("Domain XML", {"fields": ["domain_xml_preview"], "classes": ["collapse"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return self.readonly_fields

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        """The VM's delete page: the domain, each file erased and each kept (`vm_delete_plan`), a "Keep disks"
        box, and the refusal instead of the button when the delete may not go ahead. A refusal or a libvirt
        failure on confirming is a message on the VM's page, not a 500."""
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._missing(request, object_id)
        if not self.has_delete_permission(request, obj):
            raise PermissionDenied
        if request.method == "POST" and request.POST.get("post") == "yes":
            pk, name = obj.pk, obj.name
            try:
                plan = services.vm_delete(vm=obj, keep_disks=_keep_disks(request), actor=admin_actor(request))
            except VaporError as exc:
                self.message_user(request, f"Not deleted: {exc.message}", messages.ERROR)
                return redirect("admin:vms_virtualmachine_change", pk)
            _log_deleted(request, pk, name)
            self.message_user(request, f"The virtual machine {name} was deleted: {_deleted_summary(plan)}.", messages.SUCCESS)
            return redirect("admin:vms_virtualmachine_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Delete virtual machine {obj.name}?",
            "opts": self.opts,
            "object": obj,
            **_delete_context(obj),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/vms/virtualmachine/delete_confirmation.html", context)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: VirtualMachine) -> str:
        """The status, with the live domain state beneath when it says more (paused, crashed, ...)."""
        colours = {"running": "#2e7d32", "failed": "#ba2121", "provisioning": "#b26a00", "deleting": "#b26a00"}
        badge = format_html('<b style="color:{}" title="{}">{}</b>', colours.get(obj.status, "#555"), obj.error, obj.get_status_display())
        plain = {VmStatus.RUNNING: "running", VmStatus.STOPPED: "shutoff", VmStatus.MISSING: "missing"}
        ip = admin_addresses.ip_line(obj)  # the guest's address beneath, from the stored (prefetched) NIC rows
        if obj.state and obj.state != plain.get(VmStatus(obj.status)):
            return format_html('{}<br><small class="vapor-state">{}</small>{}', badge, obj.state, ip)
        return format_html("{}{}", badge, ip)

    @admin.display(description="Project", ordering="project__name")
    def placed(self, obj: VirtualMachine) -> str:
        """Its project, and beneath it the host it runs on: one column, so the list still fits 1280 px."""
        return format_html('{}<br><small class="vapor-vm-host">on {}</small>', obj.project, obj.host)

    @admin.display(description="Memory · vCPUs", ordering="memory_mb")
    def size(self, obj: VirtualMachine) -> str:
        return f"{obj.memory_mb} MB · {obj.vcpus} vCPU{'' if obj.vcpus == 1 else 's'}"

    @admin.display(description="State checked", ordering="state_checked_at", empty_value="never")
    def checked(self, obj: VirtualMachine) -> str | None:
        """The settings' formats (to the second, with the zone) on two lines: the date, then the time."""
        if obj.state_checked_at is None:
            return None
        local = timezone.localtime(obj.state_checked_at)
        return format_html("{}<br>{}", formats.date_format(local, "DATE_FORMAT"), formats.date_format(local, "TIME_FORMAT"))

    @admin.display(description="OS", ordering="os_variant")
    def os(self, obj: VirtualMachine) -> str:
        return obj.os_variant or obj.os_type or "-"

    @admin.display(description="Console")
    def console(self, obj: VirtualMachine) -> str:
        """Where the console listens: the port libvirt assigned, read from the live domain (one call, this page only)."""
        if obj.graphics_type == "none":
            return "none"
        where = f"{obj.get_graphics_type_display()} on {obj.graphics_listen}"
        if obj.status != VmStatus.RUNNING:
            return f"{where}, port {'assigned at start' if obj.graphics_port == -1 else obj.graphics_port}"
        try:
            with closing(hypervisor.get_hypervisor(obj.host.libvirt_uri)) as hv:
                live = hv.console(obj.name)
        except VaporError as exc:
            return f"{where} (could not read the host: {exc.message})"
        return f"{where}:{live.port}" + (" (password set)" if live.password_set else "")

    @admin.display(description="Domain XML (password masked)")
    def domain_xml_preview(self, obj: VirtualMachine) -> str:
        password = "x" if obj.graphics_password_set else None
        return format_html(
            '<pre style="max-height:30em;overflow:auto">{}</pre>', domain_xml(domain_spec(obj, password=password), mask_secrets=True)
        )
