"""Single-device XML for hot-plug: one `<disk>` or `<controller>`, built like the domain's own.

The elements come from the same builders as `documents.domain`, so a disk
attached later reads exactly like one defined at creation.
"""

from __future__ import annotations

from lxml import etree

from vms.hypervisor.documents.domain import _cdrom, _disk
from vms.hypervisor.specs import CdromSpec, DiskSpec


def _one(build_into: etree._Element) -> str:
    child = build_into[0]
    return etree.tostring(child, encoding="unicode")


def disk_device_xml(spec: DiskSpec) -> str:
    """`<disk device="disk">` for attachDeviceFlags / detachDeviceFlags."""
    holder = etree.Element("devices")
    _disk(holder, spec)
    return _one(holder)


def cdrom_device_xml(spec: CdromSpec) -> str:
    """`<disk device="cdrom">`; an empty `path` is an empty drive (no `<source>`): eject."""
    holder = etree.Element("devices")
    _cdrom(holder, spec)
    element = holder[0]
    if not spec.path:
        source = element.find("source")
        if source is not None:
            element.remove(source)
    return _one(holder)


def scsi_controller_xml(index: int) -> str:
    """A virtio-scsi controller, the model the domain's own SCSI controllers have."""
    return etree.tostring(etree.Element("controller", type="scsi", index=str(index), model="virtio-scsi"), encoding="unicode")


def scsi_controllers(domain_xml: str) -> set[int]:
    """The indexes of the domain's SCSI controllers."""
    root = etree.fromstring(domain_xml.encode())
    return {int(c.get("index", "0")) for c in root.iterfind("devices/controller") if c.get("type") == "scsi"}
