"""A virtual network (`<network>`): Vapor defines NAT networks and reads any network's shape."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lxml import etree

from vaporsite.errors import InvalidInput
from vms.hypervisor.documents import parse, serialize, sub


@dataclass(frozen=True)
class NatLayout:
    """The addresses a NAT network hands out, derived from its CIDR."""

    gateway: str
    netmask: str
    dhcp_start: str
    dhcp_end: str


def nat_layout(cidr: str) -> NatLayout:
    """Gateway = first host address, DHCP = every other host address.

    Only IPv4 with at least two host addresses (prefix /30 or shorter): the
    gateway takes one and guests need at least one more.
    """
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"{cidr!r} is not a network in CIDR notation: {exc}", field="cidr") from exc
    if not isinstance(network, ipaddress.IPv4Network):
        raise InvalidInput(f"{cidr!r} is not an IPv4 network", field="cidr")
    if network.prefixlen > 30:
        raise InvalidInput(f"{cidr!r} is too small: a NAT network needs a /30 or larger", field="cidr")
    first, last = network.network_address + 1, network.broadcast_address - 1
    return NatLayout(gateway=str(first), netmask=str(network.netmask), dhcp_start=str(first + 1), dhcp_end=str(last))


def nat_network_xml(name: str, bridge: str, cidr: str) -> str:
    """A NAT network with DHCP, the shape of libvirt's own `default` network."""
    layout = nat_layout(cidr)
    network = etree.Element("network")
    sub(network, "name", name)
    sub(network, "forward", mode="nat")
    sub(network, "bridge", name=bridge, stp="on", delay="0")
    ip = sub(network, "ip", address=layout.gateway, netmask=layout.netmask)
    dhcp = sub(ip, "dhcp")
    sub(dhcp, "range", start=layout.dhcp_start, end=layout.dhcp_end)
    return serialize(network)


@dataclass(frozen=True)
class NetworkShape:
    """What Vapor reads back from a network's XML."""

    forward_mode: str
    bridge: str
    cidr: str


def network_shape(document: str) -> NetworkShape:
    """Forward mode ("" for an isolated network), bridge name and the first IPv4 CIDR."""
    root = parse(document, root="network")
    forward = root.find("forward")
    bridge = root.find("bridge")
    cidr = ""
    for ip in root.iterfind("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        mask = ip.get("prefix") or ip.get("netmask") or "32"
        cidr = str(ipaddress.ip_interface(f"{ip.get('address')}/{mask}").network)
        break
    return NetworkShape(
        forward_mode="" if forward is None else forward.get("mode", "nat"),
        bridge="" if bridge is None else bridge.get("name", ""),
        cidr=cidr,
    )
