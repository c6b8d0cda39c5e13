"""Guest addresses in the admin (issue 14, point 2): the IP line in the VM list's Status column (from the stored NIC
rows, prefetched: never a libvirt call per row), the "Network addresses" panel of the VM page and its Refresh
button, a POST to `<id>/refresh/` that reads this VM's state and addresses now (`vm_refresh`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from projects.admin_scoping import admin_actor
from vaporsite.errors import VaporError
from vms.models import VirtualMachine
from vms.services.addresses import primary_address
from vms.services.states import vm_refresh

if TYPE_CHECKING:
    from vms.admin.machines import VirtualMachineAdmin

SOURCE_LABELS = {"lease": "DHCP lease", "agent": "guest agent", "arp": "ARP table"}


def ip_line(obj: VirtualMachine) -> str:
    """The VM's first IPv4 address (else its first address) as last stored, as a small line for the list's Status
    column ("" when none is known), every address in its tooltip. It may break after each dot (or colon): a column
    of its own made the list 5 px too wide for 1280 px beside the filters."""
    nics = list(obj.nics.all())  # prefetched by the list's queryset
    shown = primary_address(nics)
    if not shown:
        return ""
    every = [a["address"] for nic in nics for a in (nic.addresses or [])]
    separator = ":" if ":" in shown else "."
    parts = format_html_join(format_html("{}<wbr>", separator), "{}", ((part,) for part in shown.split(separator)))
    return format_html('<br><small class="vapor-ip" title="IP addresses: {}">{}</small>', ", ".join(every), parts)


def addresses_urls(modeladmin: VirtualMachineAdmin) -> list[Any]:
    view = modeladmin.admin_site.admin_view(lambda request, object_id: refresh_view(modeladmin, request, object_id))
    return [path("<path:object_id>/refresh/", view, name="vms_virtualmachine_refresh")]


def _labelled(address: dict[str, Any]) -> dict[str, Any]:
    source = str(address.get("source", ""))
    return {**address, "source_label": SOURCE_LABELS.get(source, source)}


def addresses_context(modeladmin: VirtualMachineAdmin, request: HttpRequest, obj: VirtualMachine) -> dict[str, Any]:
    """What day2/addresses_panel.html and addresses_tools.html show: each NIC's stored addresses, when they
    were read, the agent's flags, and the Refresh button for users who may change the VM."""
    nics = [{"nic": nic, "addresses": [_labelled(a) for a in nic.addresses or []]} for nic in obj.nics.all()]
    can = modeladmin.has_change_permission(request, obj)
    return {
        "vapor_addresses": {
            "nics": nics,
            "checked_at": obj.addresses_checked_at,
            "channel": obj.guest_agent_channel,
            "connected": obj.guest_agent_connected,
            "refresh_url": reverse("admin:vms_virtualmachine_refresh", args=[obj.pk]) if can else "",
        }
    }


def refresh_view(modeladmin: VirtualMachineAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """The Refresh button: POST only (CSRF), change permission on the VM; one `vm_refresh`; back to the page."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    obj = modeladmin.get_object(request, unquote(object_id))
    if obj is None:
        missing = f"There is no virtual machine with ID {object_id!r} here. Perhaps it was deleted?"
        modeladmin.message_user(request, missing, messages.WARNING)
        return redirect("admin:index")
    if not modeladmin.has_change_permission(request, obj):
        raise PermissionDenied
    back = redirect("admin:vms_virtualmachine_change", obj.pk)
    try:
        vm = vm_refresh(vm=obj, actor=admin_actor(request))
    except VaporError as exc:
        modeladmin.message_user(request, f"Refresh failed: {exc.message}", messages.ERROR)
        return back
    found = sum(len(nic.addresses or []) for nic in vm.nics.all())
    modeladmin.message_user(request, f"Read from the host: VM {vm.name} is {vm.state or vm.status}, {found} address(es).", messages.SUCCESS)
    return back
