"""A domain (`<domain>`): built from a `DomainSpec`, read back into a `LiveDomain`
(Vapor's checks on its own domains) or a `DomainDefinition` (adoption).

Every element is made with lxml and every request value goes into an
attribute or a text node, never into a format string: a name or path holding
`<`, `&`, quotes or `]]>` stays data and cannot add a disk or point a source
at another file. The builder writes what the spec says and decides nothing:
the firmware, SMM and the guest clock are the designer's choices
(`vms.services.design`).

The shape follows what libvirt 9.0 / QEMU 7.2 accept (see
shared/notes/libvirt-on-these-machines.md): UEFI through firmware
auto-selection and never a `<loader readonly>` with it, SMM whenever Secure
Boot is on, boot order per device and no `<boot dev>`, explicit disk formats,
and no `<graphics>` element at all for a headless domain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from lxml import etree

from vaporsite.errors import InvalidInput
from vms.hypervisor import ConsoleInfo
from vms.hypervisor.documents import parse, serialize, sub, yes
from vms.hypervisor.specs import (
    BackingSpec,
    CdromSpec,
    DefinedDisk,
    DefinedNic,
    DiskFile,
    DiskSpec,
    DomainDefinition,
    DomainSpec,
    GraphicsSpec,
    LiveDisk,
    LiveDomain,
    NicSpec,
    controllers_needed,
)

MASK = "********"
VAPOR_NS = "https://vapor.dev/xmlns/vm/1"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

# libvirt's memory units (docs: formatdomain, "Memory Allocation"), in bytes.
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}  # fmt: skip


# --- building ------------------------------------------------------------------------


def domain_xml(spec: DomainSpec, *, mask_secrets: bool = False) -> str:
    """The domain definition for `spec`, pretty-printed and deterministic.

    `mask_secrets` replaces the VNC/SPICE password with MASK, for the dry-run
    answer and the admin preview: the password is write-only everywhere but
    in the document handed to libvirt.
    """
    if spec.secure_boot and (spec.firmware != "efi" or not spec.smm):
        # The designer never asks for this: such a domain would be defined but never start.
        raise ValueError("a Secure Boot spec needs UEFI firmware and SMM")
    try:
        root = _domain(spec, mask_secrets)
    except ValueError as exc:  # lxml refuses NUL, control characters and lone surrogates
        raise InvalidInput(f"the VM definition holds characters an XML document cannot carry: {exc}", code="xml_characters") from exc
    return serialize(root)


def _domain(spec: DomainSpec, mask_secrets: bool) -> etree._Element:
    root = etree.Element("domain", type=spec.virt_type)
    sub(root, "name", spec.name)
    if spec.uuid:
        sub(root, "uuid", spec.uuid)
    if spec.title:
        sub(root, "title", spec.title)
    _metadata(root, spec)
    sub(root, "memory", str(spec.memory_mib), unit="MiB")
    sub(root, "currentMemory", str(spec.memory_mib), unit="MiB")
    sub(root, "vcpu", str(spec.vcpus), placement="static")
    _os(root, spec)
    features = sub(root, "features")
    sub(features, "acpi")
    sub(features, "apic")
    if spec.smm:
        sub(features, "smm", state="on")
    # No <cpu>: host-model/passthrough abort here.
    clock = sub(root, "clock", offset=spec.clock_offset)
    if spec.hyperv_clock:
        sub(clock, "timer", name="hypervclock", present="yes")
    sub(root, "on_poweroff", "destroy")
    sub(root, "on_reboot", "restart")
    sub(root, "on_crash", "destroy")
    _devices(root, spec, mask_secrets)
    return root


def _metadata(root: etree._Element, spec: DomainSpec) -> None:
    """Vapor's id (to find a domain's owner) and the libosinfo id virt-manager also reads."""
    if not (spec.vapor_id or spec.os_id):
        return
    metadata = sub(root, "metadata")
    if spec.vapor_id:
        vm = etree.SubElement(metadata, f"{{{VAPOR_NS}}}vm", nsmap={"vapor": VAPOR_NS})
        etree.SubElement(vm, f"{{{VAPOR_NS}}}id").text = spec.vapor_id
    if spec.os_id:
        osinfo = etree.SubElement(metadata, f"{{{LIBOSINFO_NS}}}libosinfo", nsmap={"libosinfo": LIBOSINFO_NS})
        etree.SubElement(osinfo, f"{{{LIBOSINFO_NS}}}os", id=spec.os_id)


def _os(root: etree._Element, spec: DomainSpec) -> None:
    """Firmware by auto-selection: libvirt picks the OVMF build whose features match.

    Both features are stated either way, because `firmware='efi'` alone picks
    the Secure Boot build, which then fails without SMM.
    """
    os_element = sub(root, "os")
    sub(os_element, "type", "hvm", arch=spec.arch, machine=spec.machine)
    if spec.firmware == "efi":
        os_element.set("firmware", "efi")
        firmware = sub(os_element, "firmware")
        sub(firmware, "feature", enabled=yes(spec.secure_boot), name="enrolled-keys")
        sub(firmware, "feature", enabled=yes(spec.secure_boot), name="secure-boot")


def _devices(root: etree._Element, spec: DomainSpec, mask_secrets: bool) -> None:
    devices = sub(root, "devices")
    for disk in spec.disks:
        _disk(devices, disk)
    for cdrom in spec.cdroms:
        _cdrom(devices, cdrom)
    # Every controller the SCSI drives' names address, written as virtio-scsi: left
    # to libvirt, the ones past the first would be lsilogic, a model Vapor never asks for.
    scsi = [d.target_dev for d in spec.disks if d.bus == "scsi"] + [c.target_dev for c in spec.cdroms if c.bus == "scsi"]
    for index in range(controllers_needed("scsi", scsi)):
        sub(devices, "controller", type="scsi", index=str(index), model="virtio-scsi")
    _pcie_root_ports(devices, spec, scsi_controllers=controllers_needed("scsi", scsi))
    for nic in spec.nics:
        _interface(devices, nic)
    _serial_console(devices, spec.serial_log)
    channel = sub(devices, "channel", type="unix")
    sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if spec.graphics is not None:
        sub(devices, "input", type="tablet", bus="usb")
        _graphics(devices, spec.graphics, mask_secrets)
        video = sub(devices, "video")
        sub(video, "model", type="virtio")
    if spec.tpm:
        tpm = sub(devices, "tpm", model="tpm-crb")
        sub(tpm, "backend", type="emulator", version="2.0")
    rng = sub(devices, "rng", model="virtio")
    sub(rng, "backend", "/dev/urandom", model="random")
    sub(devices, "memballoon", model="virtio")


def _pcie_root_ports(devices: etree._Element, spec: DomainSpec, *, scsi_controllers: int) -> None:
    """The q35 root ports: one per PCIe device libvirt places, plus `spec.pcie_root_ports` spare.

    A running q35 domain cannot gain a root port, so a hot-plugged disk or NIC
    needs an empty one. libvirt puts every device it addresses on the root
    ports it is given, so stating only the spare ones would leave none: the
    count covers the devices below too (virtio disks, virtio-scsi controllers,
    NICs, the virtio-serial controller of the agent channel, the USB
    controller, the RNG and the balloon; SATA, the primary video and the
    pcie-to-pci-bridge libvirt adds for an rtl8139 sit on the root bus itself).
    tests/integration/test_hardware_pcie.py checks the spare count in
    libvirt's own answer.
    """
    if not spec.pcie_root_ports:
        return
    placed = (
        sum(1 for disk in spec.disks if disk.bus == "virtio")
        + scsi_controllers
        + sum(1 for nic in spec.nics if nic.model != "rtl8139")
        + 1  # virtio-serial (the guest agent channel)
        + 1  # the USB controller libvirt adds to every q35 domain, headless too
        + 2  # rng, memballoon
    )
    sub(devices, "controller", type="pci", index="0", model="pcie-root")
    for index in range(1, placed + spec.pcie_root_ports + 1):
        sub(devices, "controller", type="pci", index=str(index), model="pcie-root-port")


def _disk_element(devices: etree._Element, device: str, path: str, fmt: str, bus: str, target: str) -> etree._Element:
    disk = sub(devices, "disk", type="file", device=device)
    driver = sub(disk, "driver", name="qemu", type=fmt)
    if fmt == "qcow2" and device == "disk":
        driver.set("discard", "unmap")  # the guest's TRIM shrinks the thin image again
    sub(disk, "source", file=path)
    sub(disk, "target", dev=target, bus=bus)
    return disk


def _boot(parent: etree._Element, order: int | None) -> None:
    if order is not None:
        sub(parent, "boot", order=str(order))


def _disk(devices: etree._Element, spec: DiskSpec) -> None:
    disk = _disk_element(devices, "disk", spec.path, spec.format, spec.bus, spec.target_dev)
    if spec.backing is not None:
        _backing_store(disk, spec.backing)
    if spec.readonly:
        sub(disk, "readonly")
    _boot(disk, spec.boot_order)


def _backing_store(disk: etree._Element, chain: tuple[BackingSpec, ...]) -> None:
    """The checked chain as nested `<backingStore>` elements after `<source>`, ending in an empty one.

    libvirt (blockdev, 5.10 and later) opens exactly the chain it is given and
    reads no backing file name from an image header: the guest cannot point
    QEMU at a file nobody checked by rewriting a header after the check.
    """
    outer = store = etree.Element("backingStore", type="file") if chain else etree.Element("backingStore")
    for position, link in enumerate(chain):
        sub(store, "format", type=link.format)
        sub(store, "source", file=link.path)
        store = sub(store, "backingStore", type="file") if position + 1 < len(chain) else sub(store, "backingStore")
    source = disk.find("source")
    assert source is not None
    source.addnext(outer)


def _cdrom(devices: etree._Element, spec: CdromSpec) -> None:
    disk = _disk_element(devices, "cdrom", spec.path, "raw", spec.bus, spec.target_dev)
    sub(disk, "readonly")
    _boot(disk, spec.boot_order)


def _interface(devices: etree._Element, spec: NicSpec) -> None:
    kind = {"network": "network", "bridge": "bridge"}[spec.kind]
    interface = sub(devices, "interface", type=kind)
    if spec.mac:
        sub(interface, "mac", address=spec.mac)
    sub(interface, "source", **{kind: spec.source})
    sub(interface, "model", type=spec.model)


def _serial_console(devices: etree._Element, log: str) -> None:
    """A pty for `virsh console`; with `log`, virtlogd also copies what the
    guest writes there to that file (boot diagnostics, in-guest tests)."""
    serial = sub(devices, "serial", type="pty")
    if log:
        sub(serial, "log", file=log, append="off")
    sub(serial, "target", port="0")
    console = sub(devices, "console", type="pty")
    sub(console, "target", type="serial", port="0")


def _graphics(devices: etree._Element, spec: GraphicsSpec, mask_secrets: bool) -> None:
    graphics = sub(devices, "graphics", type=spec.type, port=str(spec.port), autoport=yes(spec.port == -1), listen=spec.listen)
    if spec.password:
        graphics.set("passwd", MASK if mask_secrets else spec.password)
    sub(graphics, "listen", type="address", address=spec.listen)


# --- reading -------------------------------------------------------------------------


def domain_name(document: str) -> str:
    """The `<name>` of a domain definition ("" if it has none)."""
    return (parse(document, root="domain").findtext("name") or "").strip()


def parse_domain(xml: str) -> LiveDomain:
    """What a domain's XML (inactive or live, with aliases and addresses) says about it."""
    root = parse(xml, root="domain")
    loader = root.find("os/loader")
    smm = root.find("features/smm")
    tpm = root.find("devices/tpm")
    tpm_backend = root.find("devices/tpm/backend")
    graphics = root.find("devices/graphics")
    return LiveDomain(
        name=root.findtext("name") or "",
        uuid=root.findtext("uuid") or "",
        virt_type=root.get("type", ""),
        firmware="efi" if _efi(root) else "bios",
        loader=(loader.text or "").strip() if loader is not None else "",
        loader_secure=loader is not None and loader.get("secure") == "yes",
        smm=smm is not None and smm.get("state", "on") == "on",
        tpm_model=tpm.get("model", "") if tpm is not None else "",
        tpm_version=tpm_backend.get("version", "") if tpm_backend is not None else "",
        disks=tuple(_live_disk(disk) for disk in root.iterfind("devices/disk") if disk.get("device", "disk") in ("disk", "cdrom")),
        macs=tuple(mac.get("address", "") for mac in root.iterfind("devices/interface/mac")),
        graphics_type=graphics.get("type", "") if graphics is not None else "",
        graphics_port=_non_negative(graphics.get("port")) if graphics is not None else None,
        graphics_listen=_listen(graphics) if graphics is not None else "",
    )


def parse_console(xml: str) -> ConsoleInfo:
    """The graphical console of a domain's XML; `password_set` is only known from the secure XML."""
    graphics = parse(xml, root="domain").find("devices/graphics")
    if graphics is None:
        return ConsoleInfo(type="", listen="", port=None, password_set=False)
    return ConsoleInfo(
        type=graphics.get("type", ""),
        listen=_listen(graphics),
        port=_non_negative(graphics.get("port")),
        password_set=bool(graphics.get("passwd")),
    )


def parse_serial_log(xml: str) -> str:
    """The file a domain's first serial port is logged to (`<serial><log file=...>`); "" when it has none."""
    return _serial_log(parse(xml, root="domain"))


def _serial_log(root: etree._Element) -> str:
    log = root.find("devices/serial/log")
    return log.get("file", "") if log is not None else ""


def parse_definition(xml: str) -> DomainDefinition:
    """What a whole domain definition (inactive XML preferred) says, in Vapor's terms.

    Adopting someone else's domain needs more than `parse_domain` reads:
    memory, vCPUs, machine, the kind of each disk source and NIC.
    """
    root = parse(xml, root="domain")
    skipped: list[str] = []
    os_type = root.find("os/type")
    graphics = root.find("devices/graphics")
    disks = _read_devices(root.iterfind("devices/disk"), _defined_disk, skipped)
    nics = _read_devices(root.iterfind("devices/interface"), _defined_nic, skipped)
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
        serial_log=_serial_log(root),
        disks=tuple(disks),
        nics=tuple(nics),
        skipped=tuple(skipped),
    )


def parse_disk_files(xml: str) -> tuple[DiskFile, ...]:
    """Every file a domain's XML (live or inactive) names as a disk or CD-ROM, and the
    files of their `<backingStore>` chains (libvirt writes the chain into the
    live XML of a running domain). Network sources (nbd, iscsi ...) name no file."""
    files: list[DiskFile] = []
    for disk in parse(xml, root="domain").iterfind("devices/disk"):
        readonly = disk.get("device", "disk") in ("cdrom", "floppy") or disk.find("readonly") is not None
        own = _disk_file(disk, readonly=readonly, backing=False)
        if own is not None:
            files.append(own)
        for store in disk.iter("backingStore"):
            backing = _disk_file(store, readonly=True, backing=True)
            if backing is not None:
                files.append(backing)
    return tuple(files)


def _disk_file(element: etree._Element, *, readonly: bool, backing: bool) -> DiskFile | None:
    source = element.find("source")
    if source is None:
        return None  # an empty CD-ROM drive, or the end of a chain (<backingStore/>)
    kind = element.get("type", "file")
    if kind == "volume":
        pool, volume = source.get("pool", ""), source.get("volume", "")
        return DiskFile("", pool, volume, readonly, backing) if pool and volume else None
    path = source.get("file") if kind == "file" else source.get("dev") if kind == "block" else None
    return DiskFile(path, "", "", readonly, backing) if path else None


def _efi(root: etree._Element) -> bool:
    """UEFI: asked for by auto-selection (inactive XML) or a pflash loader (live XML, or chosen by hand)."""
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


def _non_negative(value: str | None) -> int | None:
    """A non-negative integer attribute; None when absent or -1 (libvirt's "not assigned yet")."""
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number >= 0 else None


def _listen(graphics: etree._Element) -> str:
    address = graphics.find("listen[@type='address']")
    if graphics.get("listen"):
        return graphics.get("listen", "")
    return address.get("address", "") if address is not None else ""


def _graphics_port(graphics: etree._Element | None) -> int:
    if graphics is None or graphics.get("autoport") == "yes":
        return -1
    port = _non_negative(graphics.get("port"))
    return -1 if port is None else port


def _live_disk(disk: etree._Element) -> LiveDisk:
    source = disk.find("source")
    target = disk.find("target")
    driver = disk.find("driver")
    boot = disk.find("boot")
    return LiveDisk(
        device="cdrom" if disk.get("device") == "cdrom" else "disk",
        target_dev=target.get("dev", "") if target is not None else "",
        bus=target.get("bus", "") if target is not None else "",
        source=(source.get("file") or source.get("dev") or "") if source is not None else "",  # no source: an empty CD-ROM drive
        format=driver.get("type", "") if driver is not None else "",
        readonly=disk.find("readonly") is not None,
        boot_order=_non_negative(boot.get("order")) if boot is not None else None,
        backing=_backing_chain(disk),
    )


def _backing_chain(disk: etree._Element) -> tuple[BackingSpec, ...] | None:
    """The `<backingStore>` chain of a disk, nearest first; None when the XML states none."""
    store = disk.find("backingStore")
    if store is None:
        return None
    chain: list[BackingSpec] = []
    while store is not None:
        source, fmt = store.find("source"), store.find("format")
        if source is None:  # the empty <backingStore/> that ends a chain
            break
        chain.append(BackingSpec(path=source.get("file", ""), format=fmt.get("type", "") if fmt is not None else ""))  # type: ignore[arg-type]
        store = store.find("backingStore")
    return tuple(chain)


T = TypeVar("T")


def _read_devices(elements: Iterable[etree._Element], read: Callable[[etree._Element], T | str], skipped: list[str]) -> list[T]:
    """What `read` makes of each element; the ones it cannot read (it answers why, in words) go to `skipped`."""
    devices: list[T] = []
    for element in elements:
        device = read(element)
        if isinstance(device, str):
            skipped.append(device)
        else:
            devices.append(device)
    return devices


def _defined_disk(element: etree._Element) -> DefinedDisk | str:
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


def _defined_nic(element: etree._Element) -> DefinedNic | str:
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
