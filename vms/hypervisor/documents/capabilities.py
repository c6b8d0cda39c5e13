"""What the host offers: `<capabilities>` (virConnectGetCapabilities) and
`<domainCapabilities>` (virConnectGetDomainCapabilities), read only."""

from __future__ import annotations

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
    """UEFI, Secure Boot and TPM as `virConnectGetDomainCapabilities` states them; None where it is silent.

    UEFI: `<os><enum name='firmware'>` lists `efi`, or the `<loader>` names
    firmware files. Secure Boot: the loader's `secure` enum offers `yes`.
    TPM: `<devices><tpm supported=...>` (libvirt 8 and later state it) with the `emulator`
    backend among those listed (swtpm found).
    """
    root = parse(document, root="domainCapabilities")
    os_node = root.find("os")
    uefi: bool | None = None
    secure: bool | None = None
    if os_node is not None:
        kinds = [(v.text or "").strip() for v in os_node.iterfind("enum[@name='firmware']/value")]
        loader = os_node.find("loader")
        files = [] if loader is None or loader.get("supported") == "no" else [v for v in loader.iterfind("value") if (v.text or "").strip()]
        uefi = "efi" in kinds or bool(files)
        if loader is not None and loader.find("enum[@name='secure']") is not None:
            secure = uefi and "yes" in [(v.text or "").strip() for v in loader.iterfind("enum[@name='secure']/value")]
        elif not uefi:
            secure = False
    tpm_node = root.find("devices/tpm")
    tpm = None if tpm_node is None or tpm_node.get("supported") not in ("yes", "no") else tpm_node.get("supported") == "yes"
    backends = [] if tpm_node is None else [(v.text or "").strip() for v in tpm_node.iterfind("enum[@name='backendModel']/value")]
    if tpm and backends and "emulator" not in backends:
        tpm = False  # only passthrough of a host TPM: Vapor's TPM is swtpm's emulator, which is not installed there
    return FirmwareSupport(uefi=uefi, secure_boot=secure, tpm=tpm)
