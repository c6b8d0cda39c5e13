"""The console pages: noVNC for the graphical console, xterm.js for the serial
port, and the serial log's tail.

Thin entry points. A page only decides what to show: the VM comes through
the one scoping helper (a VM outside the user's projects is a 404), the
Console permissions say whether there is anything to open at all, and the
host says which display the VM has. Whether this user may open this VM's
console now is the ticket API's decision (the page asks it for a ticket);
the bytes go through the websocket, never through these views. The VNC
password is neither read nor shown: the page only learns that one is set
and asks the user for it, and the browser hands it to the RFB stream.
"""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, render
from django.urls import reverse, reverse_lazy

from projects.access import in_visible_projects
from vaporsite.errors import VaporError
from vaporsite.paths import guard_file
from vms import hypervisor
from vms.choices import VmStatus
from vms.hypervisor.documents.domain import parse_serial_log
from vms.models import VirtualMachine

USE = "vms.use_console"
WATCH = "vms.watch_console"
LOG_TAIL_BYTES = 64 * 1024
LOGIN_URL = reverse_lazy("admin:login")


def can_use_console(user: Any) -> bool:
    """Open a console and type in it (the ticket API checks the role in the VM's project besides)."""
    return bool(user.has_perm(USE))


def can_watch_console(user: Any) -> bool:
    """See a serial console at least: the Console button and the serial page are for these users."""
    return bool(user.has_perm(USE) or user.has_perm(WATCH))


def ticket_api_url(vm: VirtualMachine) -> str:
    """The ticket API of the contract (root-relative, as every URL the pages use)."""
    return f"/api/v1/virtualmachines/{vm.pk}/console"


def console_links(user: Any, vm: VirtualMachine) -> list[tuple[str, str]]:
    """(label, URL) of the consoles `user` may open for `vm`: none unless it runs; the graphical one
    for users who may type (the page explains a SPICE or headless VM), the serial one for watchers too."""
    if vm.status != VmStatus.RUNNING or not can_watch_console(user):
        return []
    links = [("Console", reverse("console-vnc", args=[vm.pk]))] if can_use_console(user) else []
    return [*links, ("Serial console", reverse("console-serial", args=[vm.pk]))]


def _visible_vm(request: HttpRequest, vm_id: int) -> VirtualMachine:
    return get_object_or_404(in_visible_projects(VirtualMachine.objects.select_related("project"), request.user), pk=vm_id)


@dataclass(frozen=True)
class Display:
    """What the graphical console of a VM is, as this page can tell: `kind` "vnc", "spice" or "none"."""

    kind: str
    password_set: bool
    host_error: str = ""


def _display(vm: VirtualMachine) -> Display:
    """The live console of a running VM (one libvirt call), else what Vapor stored."""
    stored = Display(kind=vm.graphics_type or "none", password_set=vm.graphics_password_set)
    if vm.status != VmStatus.RUNNING:
        return stored
    try:
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            live = hv.console(vm.name)
    except VaporError as exc:
        return Display(kind=stored.kind, password_set=stored.password_set, host_error=exc.message)
    return Display(kind=live.type or "none", password_set=live.password_set)


def _serial_log_file(vm: VirtualMachine) -> tuple[str, str]:
    """(the file the domain logs its serial port to, "") or ("", why it is not known)."""
    try:
        with closing(hypervisor.get_hypervisor(vm.host.libvirt_uri)) as hv:
            return parse_serial_log(hv.domain_xml(vm.name)), ""
    except VaporError as exc:
        return "", exc.message


def _page(request: HttpRequest, vm: VirtualMachine, kind: str, extra: dict[str, Any]) -> HttpResponse:
    get_token(request)  # the CSRF cookie the page's script sends back when it asks the API for a ticket
    context = {
        "vm": vm,
        "kind": kind,
        "running": vm.status == VmStatus.RUNNING,
        "can_type": can_use_console(request.user),
        "config": {
            "vm": vm.pk,
            "type": kind,
            "api": ticket_api_url(vm),
            "websocket": f"/ws/consoles/{vm.pk}/{kind}",
            "readOnly": not can_use_console(request.user),
        },
        "vm_admin_url": reverse("admin:vms_virtualmachine_change", args=[vm.pk]),
        "vnc_url": reverse("console-vnc", args=[vm.pk]),
        "serial_url": reverse("console-serial", args=[vm.pk]),
        **extra,
    }
    return render(request, f"consoles/{kind}.html", context)


@login_required(login_url=LOGIN_URL)
def vnc_page(request: HttpRequest, vm_id: int) -> HttpResponse:
    vm = _visible_vm(request, vm_id)
    if not can_use_console(request.user):
        raise PermissionDenied("You may not open the graphical consoles of virtual machines.")
    display = _display(vm)
    return _page(request, vm, "vnc", {"display": display, "vnc_available": display.kind == "vnc"})


@login_required(login_url=LOGIN_URL)
def serial_page(request: HttpRequest, vm_id: int) -> HttpResponse:
    vm = _visible_vm(request, vm_id)
    if not can_watch_console(request.user):
        raise PermissionDenied("You may not open the serial consoles of virtual machines.")
    log_file, log_error = _serial_log_file(vm) if vm.status == VmStatus.RUNNING else (vm.serial_log, "")
    extra = {"has_log": bool(log_file), "log_error": log_error, "log_url": reverse("console-serial-log", args=[vm.pk])}
    return _page(request, vm, "serial", extra)


def _not_found(message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=404, content_type="text/plain; charset=utf-8")


@login_required(login_url=LOGIN_URL)
def serial_log(request: HttpRequest, vm_id: int) -> HttpResponse:
    """The last 64 KiB of the VM's serial log, as plain text; read only inside VAPOR_SERIAL_LOG_DIR."""
    vm = _visible_vm(request, vm_id)
    if not can_watch_console(request.user):
        raise PermissionDenied("You may not watch the serial consoles of virtual machines.")
    log_file, log_error = _serial_log_file(vm)
    if log_error:
        # A VM the host no longer knows (stopped and undefined elsewhere): the file Vapor configured, if any.
        log_file = vm.serial_log
    if not log_file:
        return _not_found(f"{vm.name} has no serial log file." + (f" (The host said: {log_error})" if log_error else ""))
    root = settings.VAPOR.serial_log_dir
    try:
        path = guard_file(log_file, roots=[root] if root else [], field="serial_log", what="serial log")
    except VaporError as exc:
        if root is None:
            return _not_found(f"{vm.name} logs its serial port to {log_file}, but VAPOR_SERIAL_LOG_DIR is not set, so Vapor reads no log.")
        return _not_found(f"The serial log of {vm.name} cannot be shown: {exc.message}")
    return HttpResponse(_tail(path), content_type="text/plain; charset=utf-8", headers={"Cache-Control": "no-store"})


def _tail(path: Path) -> str:
    with open(path, "rb") as log:
        size = os.fstat(log.fileno()).st_size
        start = max(0, size - LOG_TAIL_BYTES)
        log.seek(start)
        data = log.read(LOG_TAIL_BYTES)
    text = data.decode("utf-8", errors="replace")
    if start:
        text = f"[the last {len(data)} of {size} bytes]\n" + text.split("\n", 1)[-1]
    return text
