"""libvirt domain XML: built from a `DomainSpec`, read back into a `LiveDomain`.

Pure functions with no libvirt import, so the documents are tested against
golden files without a daemon. Every element is made with lxml and every
request value goes into an attribute or a text node, never into a format
string: a name or path holding `<`, `&`, quotes or `]]>` stays data and
cannot add a disk or point a source at another file.

The shape follows what libvirt 9.0 / QEMU 7.2 accept (see
shared/notes/libvirt-on-these-machines.md): UEFI through firmware
auto-selection and never a `<loader readonly>` with it, SMM whenever Secure
Boot is on, boot order per device and no `<boot dev>`, explicit disk formats,
and no `<graphics>` element at all for a headless domain.
"""

from __future__ import annotations

from lxml import etree

from vaporsite.errors import HypervisorError, InvalidInput
from vms.hypervisor.specs import CdromSpec, DiskSpec, DomainSpec, GraphicsSpec, LiveDisk, LiveDomain, NicSpec

MASK = "********"
VAPOR_NS = "https://vapor.dev/xmlns/vm/1"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

# libvirt's own output is trusted, but a parser that never loads a DTD,
# resolves entities or touches the network costs nothing and keeps it that way.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    element = etree.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = text
    return element


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _is_windows(os_id: str) -> bool:
    """libosinfo ids of every Windows release live under http://microsoft.com/."""
    return os_id.startswith("http://microsoft.com/")


def domain_xml(spec: DomainSpec, *, mask_secrets: bool = False) -> str:
    """The domain definition for `spec`, pretty-printed and deterministic.

    `mask_secrets` replaces the VNC/SPICE password with MASK, for the dry-run
    answer and the admin preview: the password is write-only everywhere but
    in the document handed to libvirt.
    """
    if spec.secure_boot and spec.firmware != "efi":
        raise InvalidInput("Secure Boot needs UEFI firmware", field="secure_boot")
    try:
        root = _domain(spec, mask_secrets)
    except ValueError as exc:  # lxml refuses NUL, control characters and lone surrogates
        raise InvalidInput(f"the VM definition holds characters an XML document cannot carry: {exc}", code="xml_characters") from exc
    return etree.tostring(root, encoding="unicode", pretty_print=True)


def _domain(spec: DomainSpec, mask_secrets: bool) -> etree._Element:
    root = etree.Element("domain", type=spec.virt_type)
    _sub(root, "name", spec.name)
    if spec.uuid:
        _sub(root, "uuid", spec.uuid)
    if spec.title:
        _sub(root, "title", spec.title)
    _metadata(root, spec)
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "currentMemory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus), placement="static")
    _os(root, spec)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.secure_boot:
        _sub(features, "smm", state="on")
    # Windows keeps the RTC in local time; the Hyper-V clock saves it from
    # constant resynchronisation. No <cpu>: host-model/passthrough abort here.
    if _is_windows(spec.os_id):
        clock = _sub(root, "clock", offset="localtime")
        _sub(clock, "timer", name="hypervclock", present="yes")
    else:
        _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    _devices(root, spec, mask_secrets)
    return root


def _metadata(root: etree._Element, spec: DomainSpec) -> None:
    """Vapor's id (to find a domain's owner) and the libosinfo id virt-manager also reads."""
    if not (spec.vapor_id or spec.os_id):
        return
    metadata = _sub(root, "metadata")
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
    os_element = _sub(root, "os")
    _sub(os_element, "type", "hvm", arch=spec.arch, machine=spec.machine)
    if spec.firmware == "efi":
        os_element.set("firmware", "efi")
        firmware = _sub(os_element, "firmware")
        _sub(firmware, "feature", enabled=_yes(spec.secure_boot), name="enrolled-keys")
        _sub(firmware, "feature", enabled=_yes(spec.secure_boot), name="secure-boot")


def _devices(root: etree._Element, spec: DomainSpec, mask_secrets: bool) -> None:
    devices = _sub(root, "devices")
    for disk in spec.disks:
        _disk(devices, disk)
    for cdrom in spec.cdroms:
        _cdrom(devices, cdrom)
    if any(d.bus == "scsi" for d in spec.disks) or any(c.bus == "scsi" for c in spec.cdroms):
        _sub(devices, "controller", type="scsi", model="virtio-scsi")
    for nic in spec.nics:
        _interface(devices, nic)
    _serial_console(devices, spec.serial_log)
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    if spec.graphics is not None:
        _sub(devices, "input", type="tablet", bus="usb")
        _graphics(devices, spec.graphics, mask_secrets)
        video = _sub(devices, "video")
        _sub(video, "model", type="virtio")
    if spec.tpm:
        tpm = _sub(devices, "tpm", model="tpm-crb")
        _sub(tpm, "backend", type="emulator", version="2.0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="virtio")


def _disk_element(devices: etree._Element, device: str, path: str, fmt: str, bus: str, target: str) -> etree._Element:
    disk = _sub(devices, "disk", type="file", device=device)
    driver = _sub(disk, "driver", name="qemu", type=fmt)
    if fmt == "qcow2" and device == "disk":
        driver.set("discard", "unmap")  # the guest's TRIM shrinks the thin image again
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus=bus)
    return disk


def _boot(parent: etree._Element, order: int | None) -> None:
    if order is not None:
        _sub(parent, "boot", order=str(order))


def _disk(devices: etree._Element, spec: DiskSpec) -> None:
    disk = _disk_element(devices, "disk", spec.path, spec.format, spec.bus, spec.target_dev)
    if spec.readonly:
        _sub(disk, "readonly")
    _boot(disk, spec.boot_order)


def _cdrom(devices: etree._Element, spec: CdromSpec) -> None:
    disk = _disk_element(devices, "cdrom", spec.path, "raw", spec.bus, spec.target_dev)
    _sub(disk, "readonly")
    _boot(disk, spec.boot_order)


def _interface(devices: etree._Element, spec: NicSpec) -> None:
    kind = {"network": "network", "bridge": "bridge"}[spec.kind]
    interface = _sub(devices, "interface", type=kind)
    if spec.mac:
        _sub(interface, "mac", address=spec.mac)
    _sub(interface, "source", **{kind: spec.source})
    _sub(interface, "model", type=spec.model)


def _serial_console(devices: etree._Element, log: str) -> None:
    """A pty for `virsh console`; with `log`, virtlogd also copies what the
    guest writes there to that file (boot diagnostics, in-guest tests)."""
    serial = _sub(devices, "serial", type="pty")
    if log:
        _sub(serial, "log", file=log, append="off")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")


def _graphics(devices: etree._Element, spec: GraphicsSpec, mask_secrets: bool) -> None:
    graphics = _sub(devices, "graphics", type=spec.type, port=str(spec.port), autoport=_yes(spec.port == -1), listen=spec.listen)
    if spec.password:
        graphics.set("passwd", MASK if mask_secrets else spec.password)
    _sub(graphics, "listen", type="address", address=spec.listen)


def parse_domain(xml: str) -> LiveDomain:
    """What a domain's XML (inactive or live, with aliases and addresses) says about it."""
    root = _parse(xml)
    os_element = root.find("os")
    loader = root.find("os/loader")
    efi = os_element is not None and os_element.get("firmware") == "efi"
    efi = efi or (loader is not None and loader.get("type") == "pflash")
    smm = root.find("features/smm")
    tpm = root.find("devices/tpm")
    tpm_backend = root.find("devices/tpm/backend")
    graphics = root.find("devices/graphics")
    return LiveDomain(
        name=root.findtext("name") or "",
        uuid=root.findtext("uuid") or "",
        virt_type=root.get("type", ""),
        firmware="efi" if efi else "bios",
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


def _parse(xml: str) -> etree._Element:
    try:
        root = etree.fromstring(xml.encode(), _PARSER)
    except etree.XMLSyntaxError as exc:
        raise HypervisorError(f"libvirt returned domain XML that does not parse: {exc}") from exc
    # libvirt never writes a DTD; one here can only be an attempt at entity tricks.
    if root.getroottree().docinfo.internalDTD is not None:
        raise HypervisorError("domain XML with a DOCTYPE is refused")
    if root.tag != "domain":
        raise HypervisorError(f"expected a <domain> document, got <{root.tag}>")
    return root


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
    )


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
