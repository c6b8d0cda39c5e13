"""What the host offers: `<capabilities>` (virConnectGetCapabilities) and
`<domainCapabilities>` (virConnectGetDomainCapabilities), read only."""

from __future__ import annotations

from vms.hypervisor import HostCapabilities
from vms.hypervisor.documents import parse


def host_capabilities(document: str) -> HostCapabilities:
    """The architectures and domain types of `virConnectGetCapabilities`.

    Only `hvm` guests count: Vapor builds full-virtualization domains, and
    the same arch may appear under several guest entries (one per emulator),
    so domain types are merged in the order libvirt lists them.
    """
    root = parse(document, root="capabilities")
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
    node = parse(document, root="domainCapabilities").find("vcpu")
    value = None if node is None else node.get("max")
    return int(value) if value and value.isdigit() else None
