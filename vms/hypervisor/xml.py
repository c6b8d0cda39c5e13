"""libvirt XML for storage pools, volumes and networks: built and read with lxml.

Pure functions, no libvirt import, so they are tested against literal XML
without a daemon. Documents are built element by element and never by string
formatting: a name or path holding ``<``, ``&`` or quotes stays text in the
document instead of changing its structure (the XML-injection bug of portals
that glue XML together with f-strings).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lxml import etree

from vaporsite.errors import InvalidInput
from vms.hypervisor import HostCapabilities
from vms.hypervisor.specs import IMAGE_FORMATS

# libvirt's own output is trusted, but a parser that never resolves entities
# or touches the network costs nothing and keeps it that way.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


def _text(parent: etree._Element, tag: str, text: str, **attrib: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib)
    element.text = text
    return element


def _serialize(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode", pretty_print=True)


def dir_pool_xml(name: str, path: str) -> str:
    """A directory storage pool: volumes are plain files under `path`."""
    pool = etree.Element("pool", type="dir")
    _text(pool, "name", name)
    target = etree.SubElement(pool, "target")
    _text(target, "path", path)
    return _serialize(pool)


def _check_volume(fmt: str, capacity_bytes: int) -> None:
    if fmt not in IMAGE_FORMATS:
        raise InvalidInput(f"unsupported volume format {fmt!r}; use one of {', '.join(IMAGE_FORMATS)}", field="format")
    if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
        raise InvalidInput(f"capacity must be a positive number of bytes, not {capacity_bytes!r}", field="capacity")


def _volume(name: str, capacity_bytes: int, fmt: str) -> tuple[etree._Element, etree._Element]:
    """The `<volume>` element and its `<target>`, thin (`allocation` 0)."""
    _check_volume(fmt, capacity_bytes)
    volume = etree.Element("volume")
    _text(volume, "name", name)
    _text(volume, "capacity", str(capacity_bytes), unit="bytes")
    _text(volume, "allocation", "0", unit="bytes")
    target = etree.SubElement(volume, "target")
    etree.SubElement(target, "format", type=fmt)
    return volume, target


def volume_xml(name: str, capacity_bytes: int, fmt: str = "qcow2") -> str:
    """A thin volume: `allocation` 0 so libvirt reserves no space up front.

    The format is always stated, because an image whose format QEMU has to
    guess can claim to be something else (CVE-2008-2004).
    """
    volume, target = _volume(name, capacity_bytes, fmt)
    if fmt == "qcow2":
        # Without it libvirt writes QEMU 0.10's layout (no zero clusters, no lazy refcounts).
        _text(target, "compat", "1.1")
    return _serialize(volume)


def clone_volume_xml(
    name: str, capacity_bytes: int, fmt: str = "qcow2", *, backing_path: str | None = None, backing_format: str | None = None
) -> str:
    """The target of a clone: a full copy (no backing) or a linked qcow2 overlay.

    An overlay names its backing file *and* that file's format: without the
    format QEMU would probe the backing file, and a raw template holding a
    qcow2 header would be read as qcow2 (CVE-2008-2004). qcow2 targets ask
    for compat 1.1, because libvirt otherwise writes the 0.10 layout of
    QEMU 0.10 (no zero clusters, no lazy refcounts).
    """
    volume, target = _volume(name, capacity_bytes, fmt)
    if fmt == "qcow2":
        _text(target, "compat", "1.1")
    if backing_path is not None:
        if fmt != "qcow2":
            raise InvalidInput(f"a linked clone is a qcow2 overlay; format {fmt!r} cannot have a backing file", field="format")
        if backing_format not in IMAGE_FORMATS:
            raise InvalidInput(f"unsupported backing format {backing_format!r}; use one of {', '.join(IMAGE_FORMATS)}", field="format")
        backing = etree.SubElement(volume, "backingStore")
        _text(backing, "path", backing_path)
        etree.SubElement(backing, "format", type=backing_format)
    return _serialize(volume)


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
    _text(network, "name", name)
    etree.SubElement(network, "forward", mode="nat")
    etree.SubElement(network, "bridge", name=bridge, stp="on", delay="0")
    ip = etree.SubElement(network, "ip", address=layout.gateway, netmask=layout.netmask)
    dhcp = etree.SubElement(ip, "dhcp")
    etree.SubElement(dhcp, "range", start=layout.dhcp_start, end=layout.dhcp_end)
    return _serialize(network)


def parse(document: str) -> etree._Element:
    return etree.fromstring(document.encode(), _PARSER)


def pool_type(document: str) -> str:
    """The pool's backend (dir, logical, netfs, ...)."""
    return parse(document).get("type", "")


def pool_target_path(document: str) -> str:
    """The directory (or device) a pool's XML says it lives in; "" if none."""
    return parse(document).findtext("target/path") or ""


def volume_format(document: str) -> str:
    """The format a volume's XML states (qcow2, raw, ...); "" if none."""
    node = parse(document).find("target/format")
    return "" if node is None else node.get("type", "")


@dataclass(frozen=True)
class NetworkShape:
    """What Vapor reads back from a network's XML."""

    forward_mode: str
    bridge: str
    cidr: str


def network_shape(document: str) -> NetworkShape:
    """Forward mode ("" for an isolated network), bridge name and the first IPv4 CIDR."""
    root = parse(document)
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


def domain_name(document: str) -> str:
    """The `<name>` of a domain definition ("" if it has none)."""
    return (parse(document).findtext("name") or "").strip()


def interface_type(document: str) -> str:
    """A host interface's kind as libvirt's interface driver reports it (bridge, ethernet, bond, vlan)."""
    return parse(document).get("type", "")


def host_capabilities(document: str) -> HostCapabilities:
    """The architectures and domain types of `virConnectGetCapabilities`.

    Only `hvm` guests count: Vapor builds full-virtualization domains, and
    the same arch may appear under several guest entries (one per emulator),
    so domain types are merged in the order libvirt lists them.
    """
    root = parse(document)
    arches: dict[str, list[str]] = {}
    for guest in root.iterfind("guest"):
        if (guest.findtext("os_type") or "").strip() != "hvm":
            continue
        for arch in guest.iterfind("arch"):
            offered = arches.setdefault(arch.get("name", ""), [])
            for domain in arch.iterfind("domain"):
                kind = domain.get("type", "")
                if kind and kind not in offered:
                    offered.append(kind)
    arches.pop("", None)
    host_arch = (root.findtext("host/cpu/arch") or "").strip()
    return HostCapabilities(
        arches={arch: tuple(kinds) for arch, kinds in arches.items()},
        kvm="kvm" in arches.get(host_arch, ()),
        host_arch=host_arch,
    )


def max_vcpus(document: str) -> int | None:
    """`<vcpu max=...>` of `virConnectGetDomainCapabilities`; None if absent."""
    node = parse(document).find("vcpu")
    value = None if node is None else node.get("max")
    return int(value) if value and value.isdigit() else None
