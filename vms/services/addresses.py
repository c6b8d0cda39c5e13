"""Guest addresses (issue 14, point 2): what the state refresh stores about each NIC's IP addresses.

`vms.services.states.vm_refresh_states` reads them from the host in bulk
(`Hypervisor.domain_addresses`: one listing, DHCP lease, guest agent when
connected, ARP) and hands them to `store_addresses`, which writes them on the
`NetworkInterface` rows (JSON) and the VM's `addresses_checked_at` and
guest-agent flags in a fixed number of queries. Pages and the API only read
the stored rows: a list never asks libvirt, whatever its length.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from vms.hypervisor import DomainAddresses
from vms.models import NetworkInterface, VirtualMachine

SOURCES = ("lease", "agent", "arp")
"""Where an address comes from, the most trusted first: a NAT network's DHCP lease, the guest agent, the ARP table."""


def nic_addresses(mac: str, domain: DomainAddresses | None) -> list[dict[str, Any]]:
    """The addresses of the NIC with `mac` as stored and shown: [{"address", "prefix", "family", "source"}]."""
    if domain is None:
        return []
    mac = mac.lower()
    return [
        {"address": a.address, "prefix": a.prefix, "family": a.family, "source": a.source}
        for a in domain.addresses
        if a.mac == mac and a.source in SOURCES
    ]


def store_addresses(vms: dict[int, str], read: dict[str, DomainAddresses], now: datetime) -> int:
    """Store what `read` (by domain name) says for `vms` (pk -> name): every NIC's addresses (empty when the
    domain is not running or gone) and each VM's agent flags and check time. One read of the NICs, one bulk
    update of those that changed, at most four UPDATEs of VMs. The number of NICs whose addresses changed."""
    if not vms:
        return 0
    changed = []
    for nic in NetworkInterface.objects.filter(vm_id__in=list(vms)).only("pk", "vm_id", "mac", "addresses"):
        addresses = nic_addresses(nic.mac, read.get(vms[nic.vm_id]))
        if addresses != nic.addresses:
            nic.addresses = addresses
            changed.append(nic)
    NetworkInterface.objects.bulk_update(changed, ["addresses"], batch_size=500)
    groups: dict[tuple[bool, bool], list[int]] = defaultdict(list)
    for pk, name in vms.items():
        domain = read.get(name)
        groups[(domain.channel, domain.connected) if domain else (False, False)].append(pk)
    for (channel, connected), ids in groups.items():
        VirtualMachine.objects.filter(pk__in=ids).update(
            addresses_checked_at=now, guest_agent_channel=channel, guest_agent_connected=connected
        )
    return len(changed)


def primary_address(nics: list[NetworkInterface]) -> str:
    """The first IPv4 address of the first NIC that has one (else the first address at all), for a list column."""
    every = [a for nic in nics for a in (nic.addresses or [])]
    first = next((a for a in every if a.get("family") == "ipv4"), every[0] if every else None)
    return str(first["address"]) if first else ""
