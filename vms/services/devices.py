"""Disks of an existing VM: list, attach (new, existing or clone), grow, detach.

Attach goes through creation's own checks (`vms.services.validation`: the
disk's shape, the path guard and chain, the shared-writer rules, pool room,
the counts per bus) and the project's disk quota. A running VM takes virtio
and SCSI disks live and persistently (LIVE|CONFIG); SATA and IDE only while
it is stopped (409 `not_hotpluggable`). A refused change touches nothing; a
failed one removes the volume it created.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from projects.access import SYSTEM, Actor, audit, require
from projects.choices import Role
from projects.usage import Usage
from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError
from vms import hypervisor
from vms.choices import DiskSource, EventStatus, VmStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.documents.devices import disk_device_xml, scsi_controller_xml, scsi_controllers
from vms.hypervisor.documents.domain import parse_domain
from vms.hypervisor.specs import DRIVE_UNITS, DiskSpec, drive_index
from vms.models import Disk, VirtualMachine, VmEvent
from vms.services.design import backing_for
from vms.services.lifecycle import disk_row
from vms.services.plans import PlannedDisk
from vms.services.quotas import disk_gb, quota_check
from vms.services.requests import DiskRequest, NicRequest, VmRequest
from vms.services.snapshots import vm_snapshot_names
from vms.services.validation import (
    GIB,
    HostUses,
    check_counts,
    check_disk_shape,
    check_pool_not_iso_dir,
    check_pool_room,
    disk_in_use_message,
    disk_roots,
    plan_disk,
    pool_room,
    pool_too_small,
    remote_host,
)

log = logging.getLogger("vapor.vms")

HOTPLUG_BUSES = frozenset({"virtio", "scsi"})
LIVE_STATES = frozenset({"running", "paused", "blocked", "pmsuspended"})


@dataclass(frozen=True)
class DeviceTarget:
    """A VM whose devices may change now, and whether the change is live too."""

    vm: VirtualMachine
    hv: Hypervisor
    live: bool
    state: str


def vm_for_change(*, vm: VirtualMachine, hv: Hypervisor | None, actor: Actor, what: str) -> DeviceTarget:
    """The operator role in the VM's project, a VM that is neither busy nor missing, and its domain's state."""
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    if vm.status == VmStatus.MISSING:
        raise Conflict(f"VM {vm.name} is missing on the host; {what} is not possible", code="vm_missing")
    if vm.status in (VmStatus.PROVISIONING, VmStatus.DELETING, VmStatus.FAILED):
        raise Conflict(f"VM {vm.name} is {vm.status}; {what} is not possible", code="vm_busy")
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    state = hv.domain_state(vm.name)
    return DeviceTarget(vm=vm, hv=hv, live=state in LIVE_STATES, state=state)


def record(target: DeviceTarget, actor: Actor, step: str, message: str, action: str, status: str = EventStatus.DONE) -> None:
    vm = target.vm
    VmEvent.objects.create(vm=vm, step=step, status=status, message=message, user=actor.user, source_address=actor.source_address)
    if status == EventStatus.DONE:
        audit(actor, action, target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=message)


def not_hotpluggable(vm: VirtualMachine, bus: str, what: str) -> Conflict:
    return Conflict(
        f"VM {vm.name} is running and a {bus} device cannot be {what} live: stop the VM first, or use virtio or scsi",
        field="bus",
        code="not_hotpluggable",
    )


# --- reading ------------------------------------------------------------------------------


def disk_list(*, vm: VirtualMachine) -> list[Disk]:
    return list(vm.disks.all())


def disk_get(*, vm: VirtualMachine, target_dev: str) -> Disk:
    disk = vm.disks.filter(target_dev=target_dev).first()
    if disk is None:
        raise NotFound(f"VM {vm.name} has no disk {target_dev}", field="target_dev")
    return disk


# --- attach ----------------------------------------------------------------------------------


def disk_attach(*, vm: VirtualMachine, request: DiskRequest, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> Disk:
    """Check `request` as creation would, then create/clone its volume and attach it (live when running)."""
    target = vm_for_change(vm=vm, hv=hv, actor=actor, what="attaching a disk")
    hv = target.hv
    check_disk_shape(request, field="", secure_boot=vm.secure_boot)
    if request.bus == "ide" and vm.machine != "pc":
        raise InvalidInput(f"the {vm.machine} machine has no IDE bus: use virtio, scsi or sata", field="bus")
    if target.live and request.bus not in HOTPLUG_BUSES:
        raise not_hotpluggable(vm, request.bus, "attached")
    existing = list(vm.disks.all())
    _check_counts(vm, existing, request)
    if request.boot_order is not None:
        _check_boot_order(vm, request.boot_order)
    inactive = hv.domain_xml(vm.name, inactive=True)
    target_dev = free_target(inactive, request.bus)
    order = max((d.order for d in existing), default=-1) + 1
    pool = hv.pool(vm.storage_pool)
    if request.kind != "existing":
        check_pool_not_iso_dir(pool)
    remote = remote_host(hv, vm.host)
    planned = plan_disk(
        request,
        order=order,
        field="",
        vm_name=vm.name,
        pool=pool,
        hv=hv,
        roots=disk_roots(hv) if request.kind != "new" and remote is None else [],  # a new volume has no source to guard
        target_dev=target_dev,
        boot_order=request.boot_order,
        host_uses=HostUses(hv),
        remote=remote,
    )
    check_pool_room(pool, [planned], lambda d: "size" if request.size is not None else "clone_from")
    new_gb = disk_gb([planned.capacity_bytes]) if planned.source != DiskSource.EXISTING else 0
    created = False
    try:
        with transaction.atomic():
            quota_check(project=vm.project, asked=Usage(vms=0, vcpus=0, memory_mb=0, disk_gb=new_gb))
            disk = _store(vm, planned)
            VirtualMachine.objects.filter(pk=vm.pk).update(disk_gb=F("disk_gb") + new_gb)
            if planned.source == DiskSource.NEW:
                hv.create_volume(vm.storage_pool, planned.volume_name, planned.capacity_bytes, planned.format)
                created = True
            elif planned.source == DiskSource.CLONE:
                grow_to = planned.size_gb * GIB if planned.size_gb else None
                hv.clone_volume(
                    vm.storage_pool,
                    planned.volume_name,
                    planned.source_path,
                    planned.source_format,
                    linked=planned.linked,
                    fmt=planned.format,
                    capacity_bytes=grow_to,
                )
                created = True
            _attach(target, inactive, disk)
            record(target, actor, f"attach disk {target_dev}", _describe(disk, target.live), "vm.disk_attach")
    except VaporError as exc:
        if created:
            _delete_quietly(hv, vm.storage_pool, planned.volume_name)
        record(target, actor, f"attach disk {target_dev}", exc.message, "vm.disk_attach", EventStatus.FAILED)
        raise
    vm.refresh_from_db()
    return disk


def _check_counts(vm: VirtualMachine, existing: list[Disk], request: DiskRequest) -> None:
    """Creation's limits (disks per VM, IDE drives, PCI devices) for the VM with the new disk."""
    cdroms = vm.cdroms.count()
    whole = VmRequest(
        name=vm.name,
        memory=vm.memory_mb,
        vcpus=vm.vcpus,
        disks=(*(DiskRequest(size=1, bus=d.bus) for d in existing), request),
        iso_path="cdrom" if cdroms > 0 else None,
        secondary_iso="cdrom" if cdroms > 1 else None,
        networks=tuple(NicRequest() for _ in range(vm.nics.count())),
    )
    check_counts(whole)


def _check_boot_order(vm: VirtualMachine, boot_order: int) -> None:
    used = [d.target_dev for d in vm.disks.filter(boot_order=boot_order)] + [c.target_dev for c in vm.cdroms.filter(boot_order=boot_order)]
    if used:
        raise InvalidInput(f"boot_order {boot_order} is already used by {', '.join(used)}", field="boot_order")


def free_target(inactive_xml: str, bus: str) -> str:
    """The first free target name of the bus's family (vdX; sdX shared by SATA and SCSI; hdX) in the definition."""
    prefix = {"virtio": "vd", "sata": "sd", "scsi": "sd", "ide": "hd"}[bus]
    taken = {d.target_dev for d in parse_domain(inactive_xml).disks}
    index = 0
    while True:
        name = prefix + _letters(index)
        if name not in taken:
            return name
        index += 1


def _letters(index: int) -> str:
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("a") + rest) + name
    return name


def _spec(disk: Disk) -> DiskSpec:
    return DiskSpec(
        path=disk.path,
        format=disk.format,  # type: ignore[arg-type]
        bus=disk.bus,  # type: ignore[arg-type]
        target_dev=disk.target_dev,
        boot_order=disk.boot_order,
        readonly=disk.readonly,
        backing=backing_for(disk),
    )


def _attach(target: DeviceTarget, inactive_xml: str, disk: Disk) -> None:
    hv, name = target.hv, target.vm.name
    added_controller = ""
    if disk.bus == "scsi":
        index = drive_index(disk.target_dev) // DRIVE_UNITS["scsi"]
        if index not in scsi_controllers(inactive_xml):
            added_controller = scsi_controller_xml(index)
            hv.attach_device(name, added_controller, live=target.live)
    try:
        hv.attach_device(name, disk_device_xml(_spec(disk)), live=target.live)
    except VaporError:
        if added_controller:
            try:
                hv.detach_device(name, added_controller, live=target.live)
            except VaporError:
                log.warning("could not remove the SCSI controller added for %s on %s", disk.target_dev, name)
        raise


def _store(vm: VirtualMachine, d: PlannedDisk) -> Disk:
    try:
        with transaction.atomic():
            row = disk_row(vm, d)
            row.save(force_insert=True)
            return row
    except IntegrityError:
        holders = sorted(set(Disk.objects.filter(path=d.path, readonly=False).values_list("vm__name", "vm__status")))
        if holders and not d.readonly:
            raise Conflict(disk_in_use_message(d.path, holders), field="path", code="disk_in_use") from None
        raise Conflict(f"VM {vm.name} changed meanwhile: try again", code="concurrent_change") from None


def _delete_quietly(hv: Hypervisor, pool: str, volume: str) -> None:
    try:
        hv.delete_volume(pool, volume)
    except VaporError as exc:
        log.warning("could not delete volume %s/%s after a failed attach: %s", pool, volume, exc.message)


def _describe(disk: Disk, live: bool) -> str:
    what = {"new": f"new {disk.size_gb} GB volume", "existing": "existing file", "clone": "clone"}[disk.source]
    return f"{what} {disk.path} on {disk.bus} ({'live and persistent' if live else 'persistent: from the next boot'})"


# --- grow --------------------------------------------------------------------------------------


def disk_grow(*, vm: VirtualMachine, target_dev: str, size_gb: int, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> Disk:
    """Grow a disk to `size_gb` GB: blockResize while the VM runs, the volume's resize while it is stopped."""
    target = vm_for_change(vm=vm, hv=hv, actor=actor, what="growing a disk")
    hv = target.hv
    disk = disk_get(vm=vm, target_dev=target_dev)
    if disk.readonly:
        raise InvalidInput(f"{target_dev} is read-only; a read-only disk does not grow", field="size_gb", code="readonly")
    max_gb = settings.VAPOR.max_disk_gb
    if size_gb > max_gb:
        raise InvalidInput(f"must be at most {max_gb} GB (VAPOR_MAX_DISK_GB)", field="size_gb")
    volume = hv.volume_by_path(disk.path)
    current = max(volume.capacity if volume else 0, (disk.size_gb or 0) * GIB)
    if size_gb * GIB < current:
        if holders := snapshot_holders(vm=vm, hv=hv, target_dev=target_dev):
            raise Conflict(
                f"{size_gb} GB is smaller than the disk ({current / GIB:g} GB), which {len(holders)} snapshot(s) hold "
                f"({', '.join(holders)}); disks only grow, and never under their snapshots",
                field="size_gb",
                code="has_snapshots",
            )
        raise InvalidInput(
            f"{size_gb} GB is smaller than the disk ({current / GIB:g} GB); disks only grow", field="size_gb", code="shrink_refused"
        )
    if size_gb * GIB == current:
        return disk
    if not target.live and volume is None:
        raise Conflict(f"{disk.path} is not a volume of a storage pool: start the VM to grow it live", field="size_gb", code="not_a_volume")
    added = disk_gb([size_gb * GIB]) - disk_gb([current]) if disk.created_by_vapor else 0
    if disk.created_by_vapor:
        pool = hv.pool(vm.storage_pool)
        room = pool_room(pool)
        if room is not None and size_gb * GIB - current > room:
            raise pool_too_small(pool, size_gb * GIB - current, room, "size_gb")
    try:
        with transaction.atomic():
            quota_check(project=vm.project, asked=Usage(vms=0, vcpus=0, memory_mb=0, disk_gb=added))
            Disk.objects.filter(pk=disk.pk).update(size_gb=size_gb)
            VirtualMachine.objects.filter(pk=vm.pk).update(disk_gb=F("disk_gb") + added)
            if target.live:
                hv.block_resize(vm.name, target_dev, size_gb * GIB)
            else:
                hv.resize_volume_path(disk.path, size_gb * GIB)
            record(target, actor, f"grow disk {target_dev}", f"to {size_gb} GB ({'live' if target.live else 'stopped'})", "vm.disk_grow")
    except VaporError as exc:
        record(target, actor, f"grow disk {target_dev}", exc.message, "vm.disk_grow", EventStatus.FAILED)
        raise
    disk.refresh_from_db()
    vm.refresh_from_db()
    return disk


# --- detach ------------------------------------------------------------------------------------


def snapshot_holders(*, vm: VirtualMachine, hv: Hypervisor, target_dev: str) -> list[str]:
    """The snapshots that hold disk `target_dev`: Vapor's own (`vm_snapshot_names`, which know their disks), and
    any other snapshot libvirt lists for the domain (made outside Vapor: its disks are unknown, so it counts)."""
    held = vm_snapshot_names(vm=vm, target_dev=target_dev)
    known = set(vm_snapshot_names(vm=vm))
    return held + [name for name in hv.snapshot_names(vm.name) if name not in known]


def disk_detach(
    *, vm: VirtualMachine, target_dev: str, delete_volume: bool = False, hv: Hypervisor | None = None, actor: Actor = SYSTEM
) -> None:
    """Detach a disk (live when running: virtio and SCSI only); `delete_volume` also deletes a volume Vapor made for it."""
    target = vm_for_change(vm=vm, hv=hv, actor=actor, what="detaching a disk")
    hv = target.hv
    disk = disk_get(vm=vm, target_dev=target_dev)
    if target.live and disk.bus not in HOTPLUG_BUSES:
        raise not_hotpluggable(vm, disk.bus, "detached")
    if count := len(holders := snapshot_holders(vm=vm, hv=hv, target_dev=target_dev)):
        raise Conflict(
            f"{target_dev} is held by {count} snapshot(s) of VM {vm.name} ({', '.join(holders)}): delete them before detaching it",
            field="target_dev",
            code="has_snapshots",
        )
    deletes = delete_volume and disk.created_by_vapor and bool(disk.volume_name)
    try:
        with transaction.atomic():
            freed = disk_gb([(disk.size_gb or 0) * GIB]) if deletes else 0
            Disk.objects.filter(pk=disk.pk).delete()
            VirtualMachine.objects.filter(pk=vm.pk).update(disk_gb=Greatest(F("disk_gb") - freed, 0))
            hv.detach_device(vm.name, disk_device_xml(_spec(disk)), live=target.live, target_dev=target_dev if target.live else "")
            what = "volume deleted" if deletes else "volume kept" if disk.created_by_vapor else "file kept"
            record(target, actor, f"detach disk {target_dev}", f"{disk.path} ({what})", "vm.disk_detach")
    except VaporError as exc:
        record(target, actor, f"detach disk {target_dev}", exc.message, "vm.disk_detach", EventStatus.FAILED)
        raise
    if deletes:
        try:
            hv.delete_volume(vm.storage_pool, disk.volume_name)
        except VaporError as exc:
            VmEvent.objects.create(vm=vm, step=f"delete volume {disk.volume_name}", status=EventStatus.FAILED, message=exc.message)
            raise
    vm.refresh_from_db()
