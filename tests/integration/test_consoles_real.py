"""The console websocket against the real daemon: a VM's VNC server reached through libvirt
(`openGraphicsFD`, into libvirtd's own network namespace, where a TCP connection from here could not go),
its serial port through libvirt's console stream, and both closed when the domain stops.

The websocket application runs in-process; the portal under its production server, in a browser and
behind nginx, is the browser tier's (tests/browser). Domains are named `c12-...` and removed with virsh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from lxml import etree
from rest_framework.test import APIClient

from tests.integration.conftest import unique, virsh
from tests.support.asgi_ws import close_async_connections, ws_session
from tests.support.factories import AdminFactory, VirtualMachineFactory
from vms import hypervisor as hypervisor_module
from vms.consoles.websocket import application
from vms.models import VirtualMachine, VmEvent

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures(close_async_connections.__name__)]

PASSWORD = "c12Sec7t"  # VNC passwords are at most 8 characters


def _domain_xml(name: str, *, password: str | None = None) -> str:
    """No disk: SeaBIOS prints its banner on the serial port (useserial) and on the screen, then finds nothing to boot."""
    domain = etree.Element("domain", type="qemu")
    etree.SubElement(domain, "name").text = name
    etree.SubElement(domain, "memory", unit="MiB").text = "64"
    etree.SubElement(domain, "vcpu").text = "1"
    os_ = etree.SubElement(domain, "os")
    etree.SubElement(os_, "type", arch="x86_64", machine="q35").text = "hvm"
    etree.SubElement(os_, "bios", useserial="yes", rebootTimeout="1000")
    devices = etree.SubElement(domain, "devices")
    serial = etree.SubElement(devices, "serial", type="pty")
    etree.SubElement(serial, "target", port="0")
    console = etree.SubElement(devices, "console", type="pty")
    etree.SubElement(console, "target", type="serial", port="0")
    graphics = etree.SubElement(devices, "graphics", type="vnc", autoport="yes", listen="127.0.0.1")
    if password:
        graphics.set("passwd", password)
    video = etree.SubElement(devices, "video")
    etree.SubElement(video, "model", type="vga")
    return etree.tostring(domain, encoding="unicode")


@pytest.fixture
def live_vm(settings, tmp_path: Path) -> Iterator[VirtualMachine]:
    name = unique("c12")
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, console_check_interval=0.2)
    path = tmp_path / f"{name}.xml"
    path.write_text(_domain_xml(name, password=PASSWORD))
    virsh("define", str(path))
    virsh("start", name)
    try:
        yield VirtualMachineFactory.create(name=name)
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


def _ticket(vm: VirtualMachine, type: str) -> dict[str, Any]:
    client = APIClient()
    client.force_authenticate(AdminFactory.create())
    response = client.post(f"/api/v1/virtualmachines/{vm.pk}/console", {"type": type}, format="json")
    assert response.status_code == 201, response.json()
    return dict(response.json())


def test_the_vnc_console_speaks_rfb_from_inside_libvirtds_namespace_and_asks_for_the_password(live_vm: VirtualMachine):
    body = _ticket(live_vm, "vnc")
    assert PASSWORD not in str(body)

    async def scenario() -> bytes:
        async with ws_session(application, body["websocket"], subprotocols=("binary",)) as ws:
            assert (await ws.next(10))["type"] == "websocket.accept"
            banner = await ws.received(lambda d: len(d) >= 12, timeout=10)
            assert banner == b"RFB 003.008\n"
            await ws.send(b"RFB 003.008\n")
            # The security types: a password-protected server offers VNC authentication (2) only.
            return await ws.received(lambda d: len(d) >= 1 and len(d) >= 1 + d[0], timeout=10)

    types = asyncio.run(scenario())
    assert types[0] >= 1 and 2 in types[1:] and 1 not in types[1:]


def test_the_serial_console_carries_the_guests_port_and_closes_when_the_domain_stops(live_vm: VirtualMachine):
    body = _ticket(live_vm, "serial")

    async def scenario() -> dict[str, Any]:
        async with ws_session(application, body["websocket"]) as ws:
            assert (await ws.next(10))["type"] == "websocket.accept"
            # A reset makes SeaBIOS print its banner on the port again, now that someone listens.
            await asyncio.to_thread(virsh, "reset", live_vm.name)
            seen = await ws.received(lambda d: b"SeaBIOS" in d, timeout=30)
            assert b"SeaBIOS" in seen
            await asyncio.to_thread(virsh, "destroy", live_vm.name)
            while True:
                message = await ws.next(timeout=15)
                if message["type"] == "websocket.close":
                    return message

    closed = asyncio.run(scenario())
    assert closed["code"] == 1000 and "VM stopped" in closed["reason"]
    messages = list(VmEvent.objects.filter(vm=live_vm, step="console serial").values_list("message", flat=True))
    assert len(messages) == 2 and "closed: open from" in messages[1]


def test_the_console_driver_reaches_the_vnc_server_without_tcp(live_vm: VirtualMachine):
    """openGraphicsFD hands over a Unix socket: libvirtd's loopback (another namespace) is never dialled."""
    sock = hypervisor_module.console_hypervisor().open_graphics(live_vm.name)
    try:
        import socket

        assert sock.family == socket.AF_UNIX
        sock.settimeout(10)
        assert sock.recv(12) == b"RFB 003.008\n"
    finally:
        sock.close()
    assert threading.active_count() >= 1
