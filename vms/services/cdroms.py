"""CD-ROM drives of an existing VM: list, add, insert/eject a library ISO, remove.

The drives are the domain's own (its definition's `<disk device="cdrom">`);
a `CdromAttachment` row records which library ISO a drive holds (none: the
drive is empty). Insert and eject work live and persistently
(updateDeviceFlags LIVE|CONFIG, forced so a tray the guest locked opens);
adding or removing a drive (SATA) only while the VM is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from isos.models import IsoImage
from isos.resolve import ResolvedIso, iso_resolve, require_ready
from isos.services import iso_record_use
from projects.access import SYSTEM, Actor
from vaporsite.errors import Conflict, NotFound, VaporError
from vms.choices import CdromSlot, EventStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.documents.devices import cdrom_device_xml
from vms.hypervisor.documents.domain import parse_domain
from vms.hypervisor.specs import CdromSpec, LiveDisk
from vms.models import CdromAttachment, VirtualMachine
from vms.services.devices import DeviceTarget, free_target, not_hotpluggable, record, vm_for_change
from vms.services.iso_copies import iso_on_host


@dataclass(frozen=True)
class CdromDrive:
    """One CD-ROM drive: its place in the domain and the library ISO in it (None: empty)."""

    target_dev: str
    bus: str
    boot_order: int | None
    path: str  # the file the definition names ("" when empty)
    attachment: CdromAttachment | None

    @property
    def iso(self) -> IsoImage | None:
        return self.attachment.iso if self.attachment else None


def _drives(vm: VirtualMachine, hv: Hypervisor) -> list[CdromDrive]:
    rows = {c.target_dev: c for c in vm.cdroms.select_related("iso")}
    disks = parse_domain(hv.domain_xml(vm.name, inactive=True)).disks
    return [
        CdromDrive(target_dev=d.target_dev, bus=d.bus, boot_order=d.boot_order, path=d.source, attachment=rows.get(d.target_dev))
        for d in disks
        if d.device == "cdrom"
    ]


def cdrom_list(*, vm: VirtualMachine, hv: Hypervisor) -> list[CdromDrive]:
    return _drives(vm, hv)


def cdrom_get(*, vm: VirtualMachine, target_dev: str, hv: Hypervisor) -> CdromDrive:
    for drive in _drives(vm, hv):
        if drive.target_dev == target_dev:
            return drive
    raise NotFound(f"VM {vm.name} has no CD-ROM drive {target_dev}", field="target_dev")


def _live_disk(target: DeviceTarget, target_dev: str) -> LiveDisk:
    for disk in parse_domain(target.hv.domain_xml(target.vm.name, inactive=True)).disks:
        if disk.device == "cdrom" and disk.target_dev == target_dev:
            return disk
    raise NotFound(f"VM {target.vm.name} has no CD-ROM drive {target_dev}", field="target_dev")


def _resolve(ref: str | None) -> ResolvedIso | None:
    if ref is None:
        return None
    resolved = iso_resolve(ref, field="iso", register=True)
    require_ready(resolved, field="iso")
    return resolved


def _lock_iso(iso: IsoImage) -> None:
    """As creation does: a delete of the ISO racing this change either waits or has won (409 here)."""
    if not IsoImage.objects.select_for_update().filter(pk=iso.pk).exists():
        raise Conflict(f"ISO {iso.pk} was deleted meanwhile", field="iso", code="iso_deleted")


def _path_on_host(target: DeviceTarget, image: IsoImage | None) -> str:
    """The file the VM's host opens for `image` ("" for none): on a remote host its checked copy, made now if
    missing (outside any transaction: it may take a while)."""
    if image is None:
        return ""
    return iso_on_host(iso=image, host=target.vm.host, hv=target.hv)


def _put_row(vm: VirtualMachine, target_dev: str, resolved: ResolvedIso | None, ref: str | None, boot_order: int | None) -> None:
    row = vm.cdroms.filter(target_dev=target_dev).first()
    if resolved is None:
        if row is not None:
            row.delete()
        return
    iso, rule = resolved.iso, resolved.rule
    _lock_iso(iso)
    if row is None:
        taken = set(vm.cdroms.values_list("slot", flat=True))
        free = [s for s in (CdromSlot.PRIMARY, CdromSlot.SECONDARY) if s not in taken]
        if not free:
            raise Conflict(f"VM {vm.name} already holds two library ISOs (primary and secondary)", field="iso", code="no_free_slot")
        CdromAttachment.objects.create(
            vm=vm, iso=iso, slot=free[0], resolved_by=rule, reference=ref or "", target_dev=target_dev, boot_order=boot_order
        )
        return
    row.iso, row.reference, row.resolved_by = iso, ref or "", rule
    row.save(update_fields=["iso", "reference", "resolved_by"])


def cdrom_change(
    *, vm: VirtualMachine, target_dev: str, iso: str | None, hv: Hypervisor | None = None, actor: Actor = SYSTEM
) -> CdromDrive:
    """Insert the library ISO `iso` refers to (id, name, path or file name) into the drive, or eject (None)."""
    target = vm_for_change(vm=vm, hv=hv, actor=actor, what="changing a CD-ROM")
    drive = _live_disk(target, target_dev)
    resolved = _resolve(iso)
    image = resolved.iso if resolved else None
    path = _path_on_host(target, image)
    spec = CdromSpec(path=path, target_dev=target_dev, bus=drive.bus, boot_order=drive.boot_order)  # type: ignore[arg-type]
    step = f"{'insert' if image else 'eject'} CD-ROM {target_dev}"
    try:
        with transaction.atomic():
            _put_row(vm, target_dev, resolved, iso, drive.boot_order)
            target.hv.update_device(vm.name, cdrom_device_xml(spec), live=target.live)
            message = f"{image.name} ({path})" if image else "empty"
            record(target, actor, step, f"{message}, {'live and persistent' if target.live else 'persistent'}", "vm.cdrom_change")
    except VaporError as exc:
        record(target, actor, step, exc.message, "vm.cdrom_change", EventStatus.FAILED)
        raise
    if image:
        iso_record_use(iso=image)
    return cdrom_get(vm=vm, target_dev=target_dev, hv=target.hv)


def cdrom_add(*, vm: VirtualMachine, iso: str | None, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> CdromDrive:
    """A new SATA CD-ROM drive (the VM stopped), empty or holding `iso`."""
    target = vm_for_change(vm=vm, hv=hv, actor=actor, what="adding a CD-ROM drive")
    if target.live:
        raise not_hotpluggable(vm, "sata", "added")
    resolved = _resolve(iso)
    image = resolved.iso if resolved else None
    inactive = target.hv.domain_xml(vm.name, inactive=True)
    target_dev = free_target(inactive, "sata")
    spec = CdromSpec(path=_path_on_host(target, image), target_dev=target_dev)
    step = f"add CD-ROM {target_dev}"
    try:
        with transaction.atomic():
            _put_row(vm, target_dev, resolved, iso, None)
            target.hv.attach_device(vm.name, cdrom_device_xml(spec), live=False)
            record(target, actor, step, f"{image.name if image else 'empty'}, persistent", "vm.cdrom_add")
    except VaporError as exc:
        record(target, actor, step, exc.message, "vm.cdrom_add", EventStatus.FAILED)
        raise
    if image:
        iso_record_use(iso=image)
    return cdrom_get(vm=vm, target_dev=target_dev, hv=target.hv)


def cdrom_remove(*, vm: VirtualMachine, target_dev: str, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> None:
    """Remove a CD-ROM drive (the VM stopped); the ISO stays in the library."""
    target = vm_for_change(vm=vm, hv=hv, actor=actor, what="removing a CD-ROM drive")
    drive = _live_disk(target, target_dev)
    if target.live:
        raise not_hotpluggable(vm, drive.bus, "removed")
    spec = CdromSpec(path=drive.source, target_dev=target_dev, bus=drive.bus)  # type: ignore[arg-type]
    step = f"remove CD-ROM {target_dev}"
    try:
        with transaction.atomic():
            vm.cdroms.filter(target_dev=target_dev).delete()
            target.hv.detach_device(vm.name, cdrom_device_xml(spec), live=False)
            record(target, actor, step, drive.source or "empty", "vm.cdrom_remove")
    except VaporError as exc:
        record(target, actor, step, exc.message, "vm.cdrom_remove", EventStatus.FAILED)
        raise
