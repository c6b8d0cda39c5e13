"""The hosts' check against the real libvirtd (issue 15): the default host's facts as the daemon reports them
(firmware support from its domain capabilities, pools, networks, bridges), and a second host on a closed port
marked down at once, beside it."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from vms.host_models import Host, HostHealth
from vms.hypervisor.libvirt_driver import LibvirtDriver
from vms.services.hosts import hosts_check

pytestmark = [pytest.mark.libvirt, pytest.mark.django_db]


def test_the_check_reads_the_real_daemon_and_a_closed_port_is_down(settings, hypervisor: LibvirtDriver) -> None:
    settings.VAPOR = dataclasses.replace(django_settings.VAPOR, libvirt_uri="qemu:///system")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Host.objects.create(name="nowhere", uri=f"qemu+tcp://127.0.0.1:{port}/system")
    assert hosts_check() == {"default": "up", "nowhere": "down"}
    default = Host.objects.get(name="default")
    facts = default.facts
    caps = hypervisor.capabilities()
    assert (facts["arch"], facts["kvm"]) == (caps.host_arch, caps.kvm)
    assert facts["cpus"] == hypervisor.host_resources().cpus and facts["memory_bytes"] > 0
    assert sorted(p["name"] for p in facts["pools"]) == sorted(p.name for p in hypervisor.list_pools())
    assert [n["name"] for n in facts["networks"]] == [n.name for n in hypervisor.list_networks()]
    assert facts["bridges"] == hypervisor.list_bridges()
    domcaps = subprocess.run(["virsh", "-c", "qemu:///system", "domcapabilities", "--machine", "q35"], capture_output=True, text=True)
    efi_offered = "<value>efi</value>" in domcaps.stdout or any(Path("/usr/share/OVMF").glob("OVMF_CODE*.fd"))
    assert facts["uefi"] is efi_offered
    assert facts["tpm"] is ("<value>emulator</value>" in domcaps.stdout.split("<tpm", 1)[-1].split("</tpm>", 1)[0])
    nowhere = Host.objects.get(name="nowhere")
    assert nowhere.health == HostHealth.DOWN and "cannot connect to" in nowhere.last_error and nowhere.facts == {}
