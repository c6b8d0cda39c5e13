"""Hypervisor hosts in the admin (issue 15): the list with health, last seen, VMs and usage; the host's page
with its settings (saved through `vms.services.hosts`, as the API saves them), what it has (read-only) and a
"Check now" button; a list action that checks the selected hosts."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from projects.access import SYSTEM, Actor
from projects.admin_scoping import admin_actor
from vaporsite.admin_support import ServiceForm, ServiceSavedAdmin
from vaporsite.errors import VaporError
from vms.host_models import Host
from vms.services import hosts as services

EDITABLE = ["uri", "enabled", "maintenance", "cpu_overcommit", "memory_overcommit", "labels"]


class HostAdminForm(ServiceForm):
    actor: Actor = SYSTEM  # set per request by HostAdmin.get_form

    class Meta:
        model = Host
        fields = ["name", *EDITABLE]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        values = {key: data[key] for key in EDITABLE if key in data}
        if self.instance.pk is not None and self.instance.is_default and not values.get("uri"):
            values.pop("uri", None)  # the default host's empty URI: it follows VAPOR_LIBVIRT_URI
        try:
            if self.instance.pk is None:
                self.created = services.host_create(name=data.get("name", ""), **values, actor=self.actor, check=False)
            else:
                changed = {key: value for key, value in values.items() if key in self.changed_data}
                services.host_update(host=self.instance, changes=changed, actor=self.actor, check=False)
        except VaporError as exc:
            self.service_error(exc)
        return data


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.1f}"


@admin.action(description="Check the selected hosts now", permissions=["change"])
def check_hosts(modeladmin: HostAdmin, request: HttpRequest, queryset: QuerySet[Host]) -> None:
    hosts = list(queryset)
    if not request.user.has_perm("vms.change_host"):
        raise PermissionDenied
    health = services.hosts_check(hosts=hosts)
    for name, state in sorted(health.items()):
        level = messages.SUCCESS if state == "up" else messages.ERROR
        error = "" if state == "up" else f": {Host.objects.get(name=name).last_error}"
        modeladmin.message_user(request, f"Host {name}: {state}{error}", level)


@admin.register(Host)
class HostAdmin(ServiceSavedAdmin):
    form = HostAdminForm
    change_form_template = "admin/vms/host/change_form.html"
    # Fits 1280 px beside the filters: placement flags under the name, last seen under the health.
    list_display = ["name_flags", "health_badge", "address", "vm_count", "usage"]
    list_filter = ["health", "enabled", "maintenance"]
    search_fields = ["name", "uri"]
    actions = [check_hosts]
    readonly_fields = ["health_badge", "last_seen_at", "last_checked_at", "last_error", "usage_table", "facts_table"]
    fieldsets = [
        (None, {"fields": ["name", "uri", "enabled", "maintenance", "cpu_overcommit", "memory_overcommit", "labels"]}),
        ("Health", {"fields": ["health_badge", "last_seen_at", "last_checked_at", "last_error"]}),
        ("Usage", {"fields": ["usage_table"]}),
        ("What the host has (read at the last check that answered)", {"fields": ["facts_table"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Host]:
        return super().get_queryset(request).annotate(vm_total=Count("vms"))

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        base = super().get_form(request, obj, change=change, **kwargs)
        return type(base.__name__, (base,), {"actor": admin_actor(request)})  # per request: the admin is shared

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        return ["name", "address", *fields] if obj is not None else fields

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return self.fieldsets[:1]
        if obj.is_default:  # its URI is the setting's: shown, not edited here
            first = [("address" if name == "uri" else name) for name in self.fieldsets[0][1]["fields"]]
            return [(None, {"fields": first}), *self.fieldsets[1:]]
        return self.fieldsets

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and not (obj is not None and obj.is_default)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        self._usage = services.hosts_usage()  # one read for the whole list (two queries), not one per row
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[Any]:
        own = [path("<path:object_id>/check/", self.admin_site.admin_view(self.check_view), name="vms_host_check")]
        return own + super().get_urls()

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], add: bool = False, change: bool = False, form_url: str = "", obj: Any = None
    ) -> Any:
        if obj is not None and self.has_change_permission(request, obj):
            context["check_url"] = reverse("admin:vms_host_check", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    def response_add(self, request: HttpRequest, obj: Host, post_url_continue: str | None = None) -> HttpResponse:
        self.message_user(request, f"Host {obj.name} is checked once it is saved; its health shows on its page.", messages.INFO)
        return super().response_add(request, obj, post_url_continue)

    def check_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The page's Check now button: POST only; one check, a message, and back to the page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        host = self.get_object(request, unquote(object_id))
        if host is None:
            return redirect("admin:vms_host_changelist")
        if not self.has_change_permission(request, host):
            raise PermissionDenied
        host = services.host_check(host=host, actor=admin_actor(request))
        if host.health == "up":
            self.message_user(request, f"Host {host.name} answers.", messages.SUCCESS)
        else:
            self.message_user(request, f"Host {host.name} does not answer: {host.last_error}", messages.ERROR)
        return redirect("admin:vms_host_change", host.pk)

    def delete_through_service(self, request: HttpRequest, obj: Any) -> None:
        services.host_delete(host=obj, actor=admin_actor(request))

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        with transaction.atomic():
            return super().delete_view(request, object_id, extra_context)

    @admin.display(description="Health", ordering="health")
    def health_badge(self, obj: Host) -> str:
        """Up / Down / Not checked yet in colour (the error as its tooltip), and when it was last seen beneath."""
        colours = {"up": "#2e7d32", "down": "#ba2121"}
        badge = format_html(
            '<b class="vapor-health-{}" style="color:{}" title="{}">{}</b>',
            obj.health, colours.get(obj.health, "#555"), obj.last_error, obj.get_health_display(),
        )  # fmt: skip
        if obj.last_seen_at is None:
            seen = "never seen"
        elif (timezone.now() - obj.last_seen_at).total_seconds() < 60:
            seen = "seen just now"
        else:
            seen = f"seen {timesince(obj.last_seen_at)} ago"
        return format_html('{}<br><small class="vapor-last-seen">{}</small>', badge, seen)

    @admin.display(description="Name", ordering="name")
    def name_flags(self, obj: Host) -> str:
        """The name, with "disabled" / "maintenance" beneath when placement may not choose it."""
        flags = [word for word, on in (("disabled", not obj.enabled), ("maintenance", obj.maintenance)) if on]
        if not flags:
            return obj.name
        return format_html('{}<br><small class="vapor-host-flags">{}</small>', obj.name, ", ".join(flags))

    @admin.display(description="libvirt URI")
    def address(self, obj: Host) -> str:
        if obj.uri:
            return obj.uri
        return format_html("{}<br><small>VAPOR_LIBVIRT_URI</small>", obj.libvirt_uri)

    @admin.display(description="VMs", ordering="vm_total")
    def vm_count(self, obj: Host) -> int:
        return int(getattr(obj, "vm_total", 0))

    @admin.display(description="Used / budget")
    def usage(self, obj: Host) -> str:
        """The live VMs' vCPUs and memory against the host's budget, on two lines."""
        used = getattr(self, "_usage", {}).get(obj.pk) or services.host_usage(obj)
        vcpus = "?" if used.vcpus_budget is None else used.vcpus_budget
        return format_html("{}/{} vCPUs<br>{}/{} GiB", used.vcpus, vcpus, _gib(used.memory_bytes), _gib(used.memory_budget_bytes))

    @admin.display(description="Usage")
    def usage_table(self, obj: Host) -> str:
        used = services.host_usage(obj)
        rows = [
            ("Live VMs", str(used.vms)),
            ("vCPUs", f"{used.vcpus} of {used.vcpus_budget if used.vcpus_budget is not None else '?'} (CPUs x {obj.cpu_overcommit:g})"),
            ("Memory", f"{_gib(used.memory_bytes)} of {_gib(used.memory_budget_bytes)} GiB (memory x {obj.memory_overcommit:g})"),
        ]
        return _table(rows)

    @admin.display(description="Facts")
    def facts_table(self, obj: Host) -> str:
        facts = obj.facts if isinstance(obj.facts, dict) else {}
        if not facts:
            return "Not read yet: the host has not answered a check."

        def yes(value: Any) -> str:
            return "unknown" if value is None else ("yes" if value else "no")

        pools = ", ".join(
            f"{p['name']} ({p.get('type') or '?'}, {_gib(p.get('available'))} of {_gib(p.get('capacity'))} GiB free)"
            for p in facts.get("pools", [])
        )
        networks = ", ".join(f"{n['name']}{'' if n.get('active') else ' (inactive)'}" for n in facts.get("networks", []))
        rows = [
            ("Host name", str(facts.get("hostname", ""))),
            ("Architecture", f"{facts.get('arch', '')}, KVM {yes(facts.get('kvm'))}"),
            ("CPUs · memory", f"{facts.get('cpus', '?')} ({facts.get('cpu_model', '')}) · {_gib(facts.get('memory_bytes'))} GiB"),
            ("UEFI · Secure Boot · TPM", f"{yes(facts.get('uefi'))} · {yes(facts.get('secure_boot'))} · {yes(facts.get('tpm'))}"),
            ("Storage pools", pools or "none"),
            ("Networks", networks or "none"),
            ("Bridges", ", ".join(facts.get("bridges", [])) or "none"),
            ("Read at", str(facts.get("read_at", ""))),
            ("Architectures offered", json.dumps(facts.get("arches", {}))),
        ]
        return _table(rows)


def _table(rows: list[tuple[str, str]]) -> str:
    return format_html('<table class="vapor-facts">{}</table>', format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))
