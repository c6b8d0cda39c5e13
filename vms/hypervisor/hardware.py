"""Changing a defined domain's hardware: memory, vCPUs, boot order, NICs (issue 14, item 3).

A mixin of `LibvirtDriver`. `live` applies to the running domain too
(VIR_DOMAIN_AFFECT_LIVE | CONFIG); without it only the persistent definition
changes (CONFIG), which is what a stopped domain has. Memory between the
current and the maximum is the virtio balloon's (libvirt 9.0 / QEMU 7.2 q35):
the guest boots with the maximum and the balloon gives back the rest, so the
current memory changes live and the maximum only while the domain is off.
"""

from __future__ import annotations

import libvirt

from vaporsite.errors import NotFound
from vms.hypervisor._connection import Connection, calls
from vms.hypervisor.documents.hardware import interface_of, interface_xml, with_boot_order
from vms.hypervisor.specs import NicSpec

_KIB_PER_MIB = 1024


def _flags(live: bool) -> int:
    return libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)


class HardwareMixin(Connection):
    """Hardware changes of persistent domains, by name."""

    def set_memory(self, name: str, memory_mib: int, *, live: bool) -> None:
        """The current memory (the balloon's target when `live`); at most the maximum."""
        domain = self._hardware_domain(name)
        with calls(field="memory"):
            domain.setMemoryFlags(memory_mib * _KIB_PER_MIB, _flags(live))

    def set_max_memory(self, name: str, max_memory_mib: int) -> None:
        """The maximum memory of the next boot (libvirt refuses it live)."""
        domain = self._hardware_domain(name)
        with calls(field="max_memory"):
            domain.setMemoryFlags(max_memory_mib * _KIB_PER_MIB, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_MEM_MAXIMUM)

    def set_vcpus(self, name: str, vcpus: int, *, live: bool) -> None:
        """The vCPUs in use (hot-plugged or unplugged when `live`); at most the maximum."""
        domain = self._hardware_domain(name)
        with calls(field="vcpus"):
            domain.setVcpusFlags(vcpus, _flags(live))

    def set_max_vcpus(self, name: str, max_vcpus: int) -> None:
        """The maximum vCPUs of the next boot."""
        domain = self._hardware_domain(name)
        with calls(field="max_vcpus"):
            domain.setVcpusFlags(max_vcpus, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)

    def set_boot_order(self, name: str, devices: list[str]) -> None:
        """Boot from `devices` (target devs, NIC MACs) in this order, from the next boot on.

        The persistent definition is read with its secrets (a VNC password
        stays) and defined again; it is never returned or logged.
        """
        domain = self._hardware_domain(name)
        with calls(field="boot_order"):
            xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
            self._connection().defineXMLFlags(with_boot_order(xml, devices), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)

    def attach_nic(self, name: str, nic: NicSpec, *, live: bool) -> None:
        domain = self._hardware_domain(name)
        with calls(field="networks"):
            domain.attachDeviceFlags(interface_xml(nic), _flags(live))

    def detach_nic(self, name: str, mac: str, *, live: bool) -> None:
        """Unplug the NIC with `mac` (live: the guest is asked, as for a PCI button press) and forget it."""
        domain = self._hardware_domain(name)
        with calls(field="mac"):
            interface = interface_of(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), mac)
            if interface is None:
                raise NotFound(f"domain '{name}' has no NIC {mac}", field="mac")
            domain.detachDeviceFlags(interface, _flags(live))

    def _hardware_domain(self, name: str) -> libvirt.virDomain:
        with calls(field="name"):
            return self._connection().lookupByName(name)
