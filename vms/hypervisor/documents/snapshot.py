"""A domain snapshot (`<domainsnapshot>`): built from a `SnapshotSpec`, read back into a `LiveSnapshot`.

The shapes libvirt 9.0 accepts: disk-only snapshots of a shut-off domain
(`<memory snapshot='no'/>`, qcow2 disks "internal"), full internal snapshots
of a running one (memory "internal", qcow2 disks "internal"), and disk-only
external snapshots (new qcow2 overlays). libvirt refuses internal memory
with external disks, so the builder does too, before libvirt sees it.
"""

from __future__ import annotations

from lxml import etree

from vaporsite.errors import InvalidInput
from vms.hypervisor.documents import parse, serialize, sub
from vms.hypervisor.specs import LiveSnapshot, SnapshotDisk, SnapshotDiskSpec, SnapshotSpec


def snapshot_xml(spec: SnapshotSpec) -> str:
    """The snapshot description for `virDomainSnapshotCreateXML`, pretty-printed and deterministic."""
    if not spec.name:
        raise InvalidInput("a snapshot needs a name", field="name")
    externals = [d.target_dev for d in spec.disks if d.snapshot == "external"]
    if spec.memory == "internal" and externals:
        raise InvalidInput(f"an internal snapshot with memory cannot make external disks ({', '.join(externals)})", field="disks")
    for disk in spec.disks:
        if disk.snapshot == "external" and not disk.path:
            raise InvalidInput(f"the external snapshot of {disk.target_dev} needs a file for its overlay", field="disks")
    try:
        root = _snapshot(spec)
    except ValueError as exc:  # lxml refuses NUL, control characters and lone surrogates
        raise InvalidInput(f"the snapshot holds characters an XML document cannot carry: {exc}", code="xml_characters") from exc
    return serialize(root)


def _snapshot(spec: SnapshotSpec) -> etree._Element:
    root = etree.Element("domainsnapshot")
    sub(root, "name", spec.name)
    if spec.description:
        sub(root, "description", spec.description)
    sub(root, "memory", snapshot=spec.memory)
    if spec.disks:
        disks = sub(root, "disks")
        for disk in spec.disks:
            _disk(disks, disk)
    return root


def _disk(disks: etree._Element, spec: SnapshotDiskSpec) -> None:
    if spec.snapshot != "external":
        sub(disks, "disk", name=spec.target_dev, snapshot=spec.snapshot)
        return
    disk = sub(disks, "disk", name=spec.target_dev, snapshot="external", type="file")
    sub(disk, "driver", type=spec.format)  # stated, so QEMU never probes the overlay's format
    sub(disk, "source", file=spec.path)


def parse_snapshot(xml: str) -> LiveSnapshot:
    """What a snapshot's XML (libvirt's description, or a request) says about it."""
    root = parse(xml, root="domainsnapshot")
    memory = root.find("memory")
    created = (root.findtext("creationTime") or "").strip()
    return LiveSnapshot(
        name=(root.findtext("name") or "").strip(),
        description=root.findtext("description") or "",
        state=(root.findtext("state") or "").strip(),
        parent=(root.findtext("parent/name") or "").strip(),
        creation_time=int(created) if created.isdigit() else None,
        memory=memory.get("snapshot", "") if memory is not None else "",
        disks=tuple(_snapshot_disk(disk) for disk in root.iterfind("disks/disk")),
    )


def _snapshot_disk(disk: etree._Element) -> SnapshotDisk:
    source = disk.find("source")
    driver = disk.find("driver")
    return SnapshotDisk(
        target_dev=disk.get("name", ""),
        snapshot=disk.get("snapshot", ""),
        path=(source.get("file") or source.get("dev") or "") if source is not None else "",
        format=driver.get("type", "") if driver is not None else "",
    )


SWTPM_DIR = "/var/lib/libvirt/swtpm"  # libvirt's default (qemu.conf `swtpm_storage_dir`): an emulated TPM's state, by domain UUID
NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"  # libvirt's default (qemu.conf `nvram_dir`), where autoselected UEFI keeps its variables


def parse_nvram_path(domain_xml: str, default_dir: str = "") -> str:
    """The file of a domain's UEFI variables: `<os><nvram>`, or (UEFI by firmware autoselection, where
    libvirt 9.0 names no file in the definition) `<default_dir>/<name>_VARS.fd`, libvirt's own; "" for BIOS."""
    root = parse(domain_xml, root="domain")
    stated = (root.findtext("os/nvram") or "").strip()
    if stated or not default_dir:
        return stated
    os_element = root.find("os")
    loader = root.find("os/loader")
    efi = (os_element is not None and os_element.get("firmware") == "efi") or (loader is not None and loader.get("type") == "pflash")
    return f"{default_dir}/{(root.findtext('name') or '').strip()}_VARS.fd" if efi else ""


def parse_tpm_state_path(domain_xml: str, default_dir: str = SWTPM_DIR) -> str:
    """The directory where libvirt keeps a domain's emulated TPM state (`<default_dir>/<uuid>`); "" without one."""
    root = parse(domain_xml, root="domain")
    if root.find("devices/tpm/backend[@type='emulator']") is None:
        return ""
    return f"{default_dir}/{(root.findtext('uuid') or '').strip()}"
