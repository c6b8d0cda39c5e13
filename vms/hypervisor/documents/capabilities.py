"""What the host offers: `<capabilities>` (virConnectGetCapabilities) and
`<domainCapabilities>` (virConnectGetDomainCapabilities), read only."""

from __future__ import annotations

from lxml import etree

from vms.hypervisor import FirmwareSupport, HostCapabilities
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


def firmware_support(document: str) -> FirmwareSupport:
    """UEFI, Secure Boot and TPM support from `virConnectGetDomainCapabilities`.

    UEFI: `efi` among the firmware values of `<os>`, or a loader image
    offered; Secure Boot: the loader's `secure` enum offers `yes`; TPM: the
    `<tpm>` device is supported with the `emulator` backend (swtpm found).
    """
    root = parse(document, root="domainCapabilities")

    def values(node: etree._Element | None, enum: str) -> set[str]:
        if node is None:
            return set()
        return {(v.text or "").strip() for v in node.iterfind(f"enum[@name='{enum}']/value")}

    os_node = root.find("os")
    loader = root.find("os/loader")
    offered = os_node is not None and os_node.get("supported") == "yes"
    uefi = offered and ("efi" in values(os_node, "firmware") or (loader is not None and loader.find("value") is not None))
    secure = uefi and "yes" in values(loader, "secure")
    tpm_node = root.find("devices/tpm")
    tpm = tpm_node is not None and tpm_node.get("supported") == "yes" and "emulator" in values(tpm_node, "backendModel")
    return FirmwareSupport(uefi=uefi, secure_boot=secure, tpm=tpm)
