"""Guest addresses (issue 14, point 2): every domain's guest-agent channel and its interfaces' IP addresses.

A mixin of `LibvirtDriver`. `domain_addresses` is one listing of the host's
domains, then per domain its XML (is the `org.qemu.guest_agent.0` channel
there, and is an agent connected to it) and, while it runs, libvirt's
`interfaceAddresses` from three sources in this order: LEASE (the DHCP
leases of libvirt's NAT networks), AGENT (only when an agent is connected:
asking a silent one would wait for its timeout), ARP (the host's neighbour
table). An address is kept once per interface, with the first source that
gave it. A source that fails for one domain (no lease file, an agent that
stopped answering, the domain stopped meanwhile) gives nothing for that
domain; it never fails the whole refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import libvirt

from vms.hypervisor import DomainAddresses, GuestAddress
from vms.hypervisor._connection import Connection, calls
from vms.hypervisor.documents import DocumentError, parse

log = logging.getLogger("vapor.hypervisor")

AGENT_CHANNEL = "org.qemu.guest_agent.0"

SOURCES = (
    ("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
    ("agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
    ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP),
)
FAMILIES = {libvirt.VIR_IP_ADDR_TYPE_IPV4: "ipv4", libvirt.VIR_IP_ADDR_TYPE_IPV6: "ipv6"}


def agent_channel(xml: str) -> tuple[bool, bool]:
    """(the domain has the guest-agent channel, an agent is connected to it) from its (live) XML."""
    try:
        root = parse(xml, root="domain")
    except DocumentError:
        return False, False
    for target in root.iterfind("devices/channel/target"):
        if target.get("type") == "virtio" and target.get("name") == AGENT_CHANNEL:
            return True, target.get("state") == "connected"
    return False, False


def addresses_from(source: str, answer: Mapping[str, Any]) -> list[GuestAddress]:
    """libvirt's `interfaceAddresses` answer ({interface: {"hwaddr", "addrs": [{"addr", "prefix", "type"}]}})
    as records; interfaces without a MAC (the guest's loopback) are left out."""
    found = []
    for interface in answer.values():
        mac = str((interface or {}).get("hwaddr") or "").lower()
        if not mac or mac == "00:00:00:00:00:00":
            continue
        for addr in interface.get("addrs") or ():
            family = FAMILIES.get(addr.get("type"))
            if family is None or not addr.get("addr"):
                continue
            prefix = int(addr.get("prefix") or 0)
            found.append(GuestAddress(mac=mac, address=str(addr["addr"]), prefix=prefix, family=family, source=source))
    return found


def merged(found: Iterable[GuestAddress]) -> tuple[GuestAddress, ...]:
    """Each (MAC, address) once, with the first source that reported it."""
    seen: dict[tuple[str, str], GuestAddress] = {}
    for item in found:
        seen.setdefault((item.mac, item.address), item)
    return tuple(seen.values())


class AddressesMixin(Connection):
    """The guest addresses the state refresh stores: one listing, then a few reads per running domain."""

    def domain_addresses(self, names: Collection[str] | None = None) -> list[DomainAddresses]:
        """Every domain's (or only those of `names`) agent channel and, while it runs, its addresses."""
        with calls():
            listed = self._connection().listAllDomains(0)
        wanted = set(names) if names is not None else None
        result = []
        for domain in listed:
            try:
                name = domain.name()
                if wanted is not None and name not in wanted:
                    continue
                channel, connected = agent_channel(domain.XMLDesc(0))
                running = bool(domain.isActive())
            except libvirt.libvirtError as exc:  # undefined meanwhile: as if listed a moment later
                log.debug("guest addresses: a domain vanished while read: %s", exc)
                continue
            found: list[GuestAddress] = []
            if running:
                for source, flag in SOURCES:
                    if source == "agent" and not connected:
                        continue
                    try:
                        found.extend(addresses_from(source, domain.interfaceAddresses(flag, 0) or {}))
                    except libvirt.libvirtError as exc:
                        log.debug("guest addresses of %s from %s: %s", name, source, exc)
            result.append(DomainAddresses(name=name, channel=channel, connected=connected and running, addresses=merged(found)))
        return sorted(result, key=lambda d: d.name)
