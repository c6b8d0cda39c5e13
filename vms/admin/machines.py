"""VMs in the admin: the VM list (stored state, never a libvirt call per row),
detail with disks/NICs/CD-ROMs and the event log, the domain XML (password
masked), lifecycle and refresh actions, and the "Create virtual machine" page
(`create.py`)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import path
from django.utils.html import format_html, format_html_join

from projects.admin_scoping import ProjectScopedAdmin, admin_actor
from vaporsite.admin_support import VaporModelAdmin
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.admin import create as admin_create
from vms.choices import VmStatus
from vms.consoles.views import can_watch_console, console_links
from vms.hypervisor.documents.domain import domain_xml
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services import lifecycle as services
from vms.services import states
from vms.services.design import domain_spec


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
    fields = ["at", "step", "status", "message", "user", "source_address"]
    readonly_fields = ["at"]
    verbose_name_plural = "event log"


def _action(label: str, action: str) -> Callable[..., None]:
    def run(modeladmin: VirtualMachineAdmin, request: HttpRequest, queryset: QuerySet[VirtualMachine]) -> None:
        for vm in queryset:
            try:
                if action == "delete":
                    services.vm_delete(vm=vm, actor=admin_actor(request))
                else:
                    services.vm_action(vm=vm, action=action, actor=admin_actor(request))
                modeladmin.message_user(request, f"{label}: {vm.name}", messages.SUCCESS)
            except VaporError as exc:
                modeladmin.message_user(request, f"{vm.name}: {exc.message}", messages.ERROR)

    run.__name__ = f"action_{action.replace('-', '_')}"
    return admin.action(description=f"{label} the selected VMs", permissions=["delete" if action == "delete" else "change"])(run)


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
    list_display = [
        "name", "project", "status_badge", "state", "memory_mb", "vcpus", "os_variant", "firmware", "template", "storage_pool", "autostart",
        "state_checked_at",
    ]  # fmt: skip
    # RelatedOnly: a filter lists only the projects and templates of the VMs the user sees.
    list_filter = [
        ("project", admin.RelatedOnlyFieldListFilter), "status", "uefi", "os_type", ("template", admin.RelatedOnlyFieldListFilter),
        "storage_pool", "autostart",
    ]  # fmt: skip
    list_select_related = ["template", "project"]
    search_fields = ["name", "uuid", "os_variant", "disks__path", "nics__mac"]
    actions = [
        _action("Start", "start"), _action("Shut down", "stop"), _action("Force off", "force-stop"), _action("Delete", "delete"),
        refresh_states,
    ]  # fmt: skip
    inlines = [DiskInline, CdromInline, NicInline, EventInline]
    readonly_fields = [
        "name", "project", "uuid", "status", "error", "memory_mb", "vcpus", "os_type", "os_variant", "architecture", "virt_type", "machine",
        "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "graphics_type", "graphics_port", "graphics_listen",
        "graphics_password_set", "disk_gb", "created_at", "template", "state", "state_checked_at", "console", "domain_xml_preview",
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

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], add: bool = False, change: bool = False, form_url: str = "", obj: Any = None
    ) -> Any:
        # The Console buttons above the page (change_form.html's object tools).
        context["console_links"] = console_links(request.user, obj) if obj is not None else []
        return super().render_change_form(request, context, add, change, form_url, obj)

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
            return format_html_join(" · ", '<a href="{}" class="vapor-console-link">{}</a>', ((url, short[label]) for label, url in links))

        return [*columns[:4], console_link, *columns[4:]]

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # Vapor's delete also removes the domain and volumes
        return actions

    def get_fieldsets(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return [
            (None, {"fields": ["name", "project", "uuid", "status", "state", "state_checked_at", "error", "template", "created_at"]}),
            (
                "Hardware",
                {"fields": ["memory_mb", "vcpus", "disk_gb", "architecture", "virt_type", "machine", "storage_pool", "autostart"]},
            ),
            ("OS and firmware", {"fields": ["os_type", "os_variant", "uefi", "secure_boot", "tpm"]}),
            ("Console", {"fields": ["console", "graphics_type", "graphics_port", "graphics_listen", "graphics_password_set"]}),
            ("Domain XML", {"fields": ["domain_xml_preview"], "classes": ["collapse"]}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: VirtualMachine | None = None) -> Any:
        return self.readonly_fields

    def delete_model(self, request: HttpRequest, obj: VirtualMachine) -> None:
        services.vm_delete(vm=obj, actor=admin_actor(request))

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
