"""Read a whole domain definition, for adopting a domain Vapor did not create.

`domain_xml.parse_domain` reads back what Vapor needs to check on its own
domains (firmware, disks, MACs, graphics port). Adopting someone else's
domain needs the rest: memory, vCPUs, machine, the kind of each disk source
and NIC. Pure functions over the XML, no libvirt call; anything Vapor cannot
represent is listed in `skipped` instead of being guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from vms.hypervisor.domain_xml import _listen, _non_negative, _parse

# libvirt's memory units (docs: formatdomain, "Memory Allocation"), in bytes.
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}  # fmt: skip


@dataclass(frozen=True)
class DefinedDisk:
    """A hard disk or CD-ROM. `kind` is libvirt's source type: file, block or volume.

    For a volume disk, `pool` and `volume` name it and `path` is empty (the
    inactive XML does not resolve it).
    """

    device: str  # "disk" or "cdrom"
    kind: str
    path: str
    pool: str
    volume: str
    format: str
    bus: str
    target_dev: str
    readonly: bool
    boot_order: int | None


@dataclass(frozen=True)
class DefinedNic:
    """An interface on a libvirt network (`kind` "network") or a host bridge ("bridge")."""

    kind: str
    source: str
    model: str  # "" when the XML leaves it to the hypervisor
    mac: str


@dataclass(frozen=True)
class DomainDefinition:
    name: str
    uuid: str
    virt_type: str
    memory_mib: int
    vcpus: int
    arch: str
    machine: str
    efi: bool
    secure_boot: bool
    tpm: bool
    graphics_type: str  # "" when headless
    graphics_port: int  # -1: assigned by libvirt when it starts
    graphics_listen: str
    serial_log: str
    disks: tuple[DefinedDisk, ...]
    nics: tuple[DefinedNic, ...]
    skipped: tuple[str, ...]  # devices Vapor cannot represent, in words


def parse_definition(xml: str) -> DomainDefinition:
    """What a domain definition (inactive XML preferred) says, in Vapor's terms."""
    root = _parse(xml)
    skipped: list[str] = []
    os_type = root.find("os/type")
    graphics = root.find("devices/graphics")
    serial_log = root.find("devices/serial/log")
    disks = []
    for element in root.iterfind("devices/disk"):
        disk = _disk(element)
        if isinstance(disk, str):
            skipped.append(disk)
        else:
            disks.append(disk)
    nics = []
    for element in root.iterfind("devices/interface"):
        nic = _nic(element)
        if isinstance(nic, str):
            skipped.append(nic)
        else:
            nics.append(nic)
    return DomainDefinition(
        name=root.findtext("name") or "",
        uuid=(root.findtext("uuid") or "").strip(),
        virt_type=root.get("type", ""),
        memory_mib=_memory_mib(root.find("memory")),
        vcpus=_int(root.findtext("vcpu"), default=1),
        arch=os_type.get("arch", "") if os_type is not None else "",
        machine=os_type.get("machine", "") if os_type is not None else "",
        efi=_efi(root),
        secure_boot=_secure_boot(root),
        tpm=_tpm(root),
        graphics_type=graphics.get("type", "") if graphics is not None else "",
        graphics_port=_graphics_port(graphics),
        graphics_listen=_listen(graphics) if graphics is not None else "",
        serial_log=serial_log.get("file", "") if serial_log is not None else "",
        disks=tuple(disks),
        nics=tuple(nics),
        skipped=tuple(skipped),
    )


def _int(text: str | None, default: int) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


def _memory_mib(memory: etree._Element | None) -> int:
    if memory is None:
        return 0
    factor = _UNITS.get(memory.get("unit", "KiB").lower(), 1024)
    return _int(memory.text, default=0) * factor // 1024**2


def _efi(root: etree._Element) -> bool:
    os_element = root.find("os")
    loader = root.find("os/loader")
    return (os_element is not None and os_element.get("firmware") == "efi") or (loader is not None and loader.get("type") == "pflash")


def _secure_boot(root: etree._Element) -> bool:
    """A secure loader (chosen by hand or by libvirt) or auto-selection asked for Secure Boot."""
    loader = root.find("os/loader")
    if loader is not None and loader.get("secure") == "yes":
        return True
    feature = root.find("os/firmware/feature[@name='secure-boot']")
    return feature is not None and feature.get("enabled") == "yes"


def _tpm(root: etree._Element) -> bool:
    """A TPM 2.0 (Vapor offers no other version; a 1.2 one is not counted)."""
    tpm = root.find("devices/tpm")
    if tpm is None:
        return False
    backend = tpm.find("backend")
    return backend is None or backend.get("version", "2.0") == "2.0"


def _graphics_port(graphics: etree._Element | None) -> int:
    if graphics is None or graphics.get("autoport") == "yes":
        return -1
    port = _non_negative(graphics.get("port"))
    return -1 if port is None else port


def _disk(element: etree._Element) -> DefinedDisk | str:
    device = element.get("device", "disk")
    kind = element.get("type", "file")
    target = element.find("target")
    target_dev = target.get("dev", "") if target is not None else ""
    if device not in ("disk", "cdrom"):
        return f"{device} {target_dev}: only disks and CD-ROMs are kept"
    if kind not in ("file", "block", "volume"):
        return f"{device} {target_dev}: a {kind} source cannot be represented"
    source = element.find("source")
    driver = element.find("driver")
    boot = element.find("boot")
    attr = (lambda name: source.get(name, "")) if source is not None else (lambda name: "")
    return DefinedDisk(
        device=device,
        kind=kind,
        path=attr("dev") if kind == "block" else attr("file"),
        pool=attr("pool"),
        volume=attr("volume"),
        format=driver.get("type", "") if driver is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        target_dev=target_dev,
        readonly=element.find("readonly") is not None,
        boot_order=_non_negative(boot.get("order")) if boot is not None else None,
    )


def _nic(element: etree._Element) -> DefinedNic | str:
    kind = element.get("type", "")
    mac = element.find("mac")
    address = mac.get("address", "") if mac is not None else ""
    if kind not in ("network", "bridge"):
        return f"interface {address or '(no MAC)'}: type {kind!r} cannot be represented"
    source = element.find("source")
    model = element.find("model")
    return DefinedNic(
        kind=kind,
        source=source.get(kind, "") if source is not None else "",
        model=model.get("type", "") if model is not None else "",
        mac=address.lower(),
    )
