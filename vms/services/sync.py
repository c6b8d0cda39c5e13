"""Keep Vapor's VM rows in step with the host's domains.

`vm_refresh_states` stores each VM's domain state (one libvirt listing for all
VMs, a fixed number of queries however many VMs there are), so listing pages
show the stored state and never ask libvirt once per row. `vm_sync` does the
same and also reports the domains Vapor does not know, and on request adopts
them as VMs.

Nothing here ever deletes: no domain, no volume, no row. A VM whose domain
has vanished becomes `missing` (and running or stopped again when the domain
comes back); a VM that is provisioning, deleting or failed is never touched,
because its domain is expected to come and go.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from isos.choices import Architecture, IsoStatus
from isos.models import IsoImage
from vaporsite.errors import NotFound, VaporError
from vms import hypervisor
from vms.choices import CdromSlot, DiskSource, EventStatus, GraphicsType, NicType, VmStatus
from vms.hypervisor import DomainInfo, Hypervisor
from vms.hypervisor.documents.domain import parse_definition
from vms.hypervisor.specs import DefinedDisk, DomainDefinition
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent

log = logging.getLogger("vapor.vms")

SYNCED_STATUSES = (VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.MISSING)
"""The statuses the host's state decides; the others belong to a task or an error."""

ACTIVE_STATES = frozenset({"running", "paused", "blocked"})
"""Domain states in which the domain holds its resources: the VM counts as running."""


def status_for(state: str | None) -> VmStatus:
    """The VM status a domain state means; None: there is no domain."""
    if state is None:
        return VmStatus.MISSING
    return VmStatus.RUNNING if state in ACTIVE_STATES else VmStatus.STOPPED


# --- state refresh ---------------------------------------------------------------


@dataclass
class _Refreshed:
    checked: int = 0
    marked_missing: list[str] = field(default_factory=list)
    still_missing: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)


def _transition_event(vm_id: int, old: str, new: str, state: str) -> VmEvent | None:
    if new == VmStatus.MISSING and old != VmStatus.MISSING:
        return VmEvent(vm_id=vm_id, step="domain missing", status=EventStatus.INFO, message="the domain is no longer defined on the host")
    if old == VmStatus.MISSING and new != VmStatus.MISSING:
        return VmEvent(vm_id=vm_id, step="domain back", status=EventStatus.INFO, message=f"the domain is on the host again ({state})")
    return None


Row = tuple[int, str, str]  # pk, name, status


def _synced_rows() -> list[Row]:
    """The VMs whose status the host decides, read *before* listing the domains.

    In that order a VM seen running or stopped had its domain defined before
    the listing (provisioning defines it first), so a domain absent from the
    listing is really gone, not defined a moment after the listing.
    """
    return list(VirtualMachine.objects.filter(status__in=SYNCED_STATUSES).values_list("pk", "name", "status"))


def _refresh(rows: list[Row], domains: dict[str, DomainInfo], now: datetime) -> _Refreshed:
    """Store the state of `rows`: one UPDATE per (old status, new status, state)
    group, at most one read and one insert.

    Each UPDATE only takes rows still in the status that was read, so a VM
    that a delete or an action moved on in the meantime is left alone.
    """
    result = _Refreshed()
    groups: dict[tuple[str, VmStatus, str], list[tuple[int, str]]] = defaultdict(list)
    for pk, name, status in rows:
        domain = domains.get(name)
        state = domain.state if domain is not None else ""
        groups[(status, status_for(domain.state if domain else None), state)].append((pk, name))
    moved: dict[int, tuple[str, str, VmStatus, str]] = {}  # pk -> name, old, new, state: the transitions to record
    for (old, new, state), members in groups.items():
        ids = [pk for pk, _name in members]
        updated = VirtualMachine.objects.filter(pk__in=ids, status=old).update(status=new, state=state, state_checked_at=now)
        result.checked += updated
        if (old == VmStatus.MISSING) != (new == VmStatus.MISSING):
            moved.update({pk: (name, old, new, state) for pk, name in members})
        elif old == new == VmStatus.MISSING:
            result.still_missing.extend(name for _pk, name in members)
    if moved and result.checked < sum(len(members) for members in groups.values()):
        # Some rows changed hands between the read and the UPDATE: record only what this run did.
        done = set(VirtualMachine.objects.filter(pk__in=list(moved), state_checked_at=now).values_list("pk", flat=True))
        moved = {pk: change for pk, change in moved.items() if pk in done}
    events = []
    for pk, (name, old, new, state) in sorted(moved.items(), key=lambda item: item[1][0]):
        (result.marked_missing if new == VmStatus.MISSING else result.back).append(name)
        event = _transition_event(pk, old, new, state)
        if event is not None:
            events.append(event)
    VmEvent.objects.bulk_create(events)
    result.still_missing.sort()
    return result


def _log(refreshed: _Refreshed) -> None:
    for name in refreshed.marked_missing:
        log.warning("VM %s: its domain is no longer on the host", name)
    for name in refreshed.back:
        log.info("VM %s: its domain is on the host again", name)


def vm_refresh_states(*, hv: Hypervisor | None = None) -> int:
    """Store every running/stopped/missing VM's domain state; the number of VMs checked.

    One libvirt listing and a fixed number of queries, whatever the number of VMs.
    """
    owned = hv is None
    hv = hv or hypervisor.get_hypervisor()
    rows = _synced_rows()
    try:
        domains = {domain.name: domain for domain in hv.list_domains()}
    finally:
        if owned:
            hv.close()
    with transaction.atomic():
        refreshed = _refresh(rows, domains, timezone.now())
    _log(refreshed)
    return refreshed.checked


def vm_record_state(*, vm: VirtualMachine, state: str | None) -> None:
    """Store one VM's freshly read domain state (None: no domain) and the status it means.

    For a VM in SYNCED_STATUSES only, and only if its status is still the one
    `vm` holds; `vm` is updated in place.
    """
    if vm.status not in SYNCED_STATUSES:
        return
    now = timezone.now()
    new = status_for(state)
    with transaction.atomic():
        if not VirtualMachine.objects.filter(pk=vm.pk, status=vm.status).update(status=new, state=state or "", state_checked_at=now):
            return
        event = _transition_event(vm.pk, vm.status, new, state or "")
        if event is not None:
            event.save()
    if event is not None:
        gone = new == VmStatus.MISSING
        _log(_Refreshed(marked_missing=[vm.name] if gone else [], back=[] if gone else [vm.name]))
    vm.status, vm.state, vm.state_checked_at = new, state or "", now


# --- sync and adoption -------------------------------------------------------------


@dataclass
class SyncReport:
    """What `vm_sync` found and did (or, in a dry run, would have done)."""

    dry_run: bool = False
    checked: int = 0  # VMs whose state was read
    unknown: list[str] = field(default_factory=list)  # domains on the host no VM row names
    adopted: list[str] = field(default_factory=list)
    not_adopted: dict[str, str] = field(default_factory=dict)  # domain -> why
    left_out: dict[str, list[str]] = field(default_factory=dict)  # adopted domain -> devices Vapor does not keep
    marked_missing: list[str] = field(default_factory=list)  # VMs whose domain vanished since the last check
    still_missing: list[str] = field(default_factory=list)
    back: list[str] = field(default_factory=list)  # missing VMs whose domain is there again

    @property
    def missing(self) -> list[str]:
        """Every VM whose domain is not on the host."""
        return sorted(self.marked_missing + self.still_missing)


@dataclass
class _Adoption:
    """An unknown domain read into unsaved rows, ready to store."""

    vm: VirtualMachine
    disks: list[Disk]
    nics: list[NetworkInterface]
    cdroms: list[CdromAttachment]
    left_out: list[str]


class _DryRunRollback(Exception):
    pass


def vm_sync(*, hv: Hypervisor | None = None, adopt: bool = False, dry_run: bool = False) -> SyncReport:
    """Refresh every VM's state and report the host's domains Vapor does not know.

    `adopt` makes VMs of those domains, from their definitions: their disks
    are `existing` and not Vapor's, so deleting such a VM keeps every file.
    A dry run does all of it in a transaction that is rolled back: the
    report is exact and nothing is written.
    """
    owned = hv is None
    hv = hv or hypervisor.get_hypervisor()
    report = SyncReport(dry_run=dry_run)
    rows = _synced_rows()
    try:
        domains = {domain.name: domain for domain in hv.list_domains()}
        known = set(VirtualMachine.objects.filter(name__in=list(domains)).values_list("name", flat=True))
        report.unknown = sorted(set(domains) - known)
        plans: dict[str, _Adoption] = {}
        if adopt:
            reader = _Reader(hv)
            for name in report.unknown:
                try:
                    plans[name] = reader.adoption(domains[name])
                except _Refused as exc:
                    report.not_adopted[name] = str(exc)
    finally:
        if owned:
            hv.close()
    try:
        with transaction.atomic():
            refreshed = _refresh(rows, domains, timezone.now())
            report.checked = refreshed.checked
            report.marked_missing, report.still_missing, report.back = refreshed.marked_missing, refreshed.still_missing, refreshed.back
            for name, plan in plans.items():
                why = _store(plan)
                if why:
                    report.not_adopted[name] = why
                else:
                    report.adopted.append(name)
                    if plan.left_out:
                        report.left_out[name] = plan.left_out
            if dry_run:
                raise _DryRunRollback
    except _DryRunRollback:
        return report
    _log(refreshed)
    if report.adopted:
        log.info("adopted %d domain(s): %s", len(report.adopted), ", ".join(report.adopted))
    return report


class _Refused(Exception):
    """This domain cannot be adopted; the message says why."""


def _overlong(instance: models.Model) -> str:
    """The first text value too long for its column, in words ("" if all fit)."""
    for column in instance._meta.concrete_fields:
        value = getattr(instance, column.attname)
        if isinstance(column, models.CharField) and column.max_length and isinstance(value, str) and len(value) > column.max_length:
            return f"{instance._meta.verbose_name} {column.name} {value!r} is longer than Vapor keeps ({column.max_length})"
    return ""


NIC_TYPES = {"network": NicType.NAT, "bridge": NicType.BRIDGE}


class _Reader:
    """Reads unknown domains from the host into unsaved rows (libvirt and read-only queries)."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self._pool_paths: dict[str, str] | None = None

    def adoption(self, domain: DomainInfo) -> _Adoption:
        if not domain.persistent:
            raise _Refused("a transient domain (not defined, gone when it stops); define it first")
        try:
            definition = parse_definition(self.hv.domain_xml(domain.name, inactive=True))
        except NotFound:
            raise _Refused("the domain was undefined meanwhile") from None
        except VaporError as exc:
            raise _Refused(f"its definition cannot be read: {exc.message}") from exc
        left_out = list(definition.skipped)
        disks, pools = self._disks(definition, left_out)
        cdroms = self._cdroms(definition, left_out)
        nics = [
            NetworkInterface(order=i, type=NIC_TYPES[n.kind], source=n.source, model=n.model, mac=n.mac)
            for i, n in enumerate(definition.nics)
        ]
        vm = self._vm(domain, definition, pools[0] if pools else "default", left_out)
        for row in [vm, *disks, *nics, *cdroms]:
            why = _overlong(row)
            if why:
                raise _Refused(why)
        return _Adoption(vm=vm, disks=disks, nics=nics, cdroms=cdroms, left_out=left_out)

    @staticmethod
    def _vm(domain: DomainInfo, definition: DomainDefinition, pool: str, left_out: list[str]) -> VirtualMachine:
        graphics = definition.graphics_type if definition.graphics_type in (GraphicsType.VNC, GraphicsType.SPICE) else GraphicsType.NONE
        if definition.graphics_type and graphics == GraphicsType.NONE:
            left_out.append(f"{definition.graphics_type} graphics: Vapor knows VNC and SPICE")
        try:
            domain_uuid = uuid.UUID(definition.uuid or domain.uuid)
        except ValueError:
            raise _Refused(f"its UUID {definition.uuid!r} does not parse") from None
        return VirtualMachine(
            name=domain.name,
            uuid=domain_uuid,
            memory_mb=max(definition.memory_mib, 1),
            vcpus=max(definition.vcpus, 1),
            architecture=definition.arch if definition.arch in Architecture.values else "",
            virt_type=definition.virt_type,
            machine=definition.machine,
            uefi=definition.efi,
            secure_boot=definition.secure_boot,
            tpm=definition.tpm,
            storage_pool=pool,
            autostart=domain.autostart,
            graphics_type=graphics,
            graphics_port=definition.graphics_port if graphics != GraphicsType.NONE else -1,
            graphics_listen=definition.graphics_listen,
            serial_log=definition.serial_log,
            status=status_for(domain.state),
            state=domain.state,
            state_checked_at=timezone.now(),
        )

    def _pool_of(self, path: str) -> str:
        """The pool whose directory holds `path`, if libvirt knows the file as a volume."""
        if self._pool_paths is None:
            self._pool_paths = self.hv.pool_paths()
        directory = os.path.dirname(path)
        return next((name for name, pool_dir in self._pool_paths.items() if os.path.normpath(pool_dir) == directory), "")

    def _disks(self, definition: DomainDefinition, left_out: list[str]) -> tuple[list[Disk], list[str]]:
        """The hard disks as `existing` rows (never Vapor's to delete) and the pools they are in."""
        disks: list[Disk] = []
        pools: list[str] = []
        for d in (d for d in definition.disks if d.device == "disk"):
            path, pool, volume_name = self._locate(d)
            if not path:
                where = f"its volume {d.pool}/{d.volume} is not on the host" if d.kind == "volume" else "it has no source"
                left_out.append(f"disk {d.target_dev}: {where}")
                continue
            if pool:
                pools.append(pool)
            disks.append(
                Disk(
                    order=len(disks),
                    source=DiskSource.EXISTING,
                    format=d.format,
                    bus=d.bus,
                    boot_order=d.boot_order,
                    readonly=d.readonly,
                    source_path=path,
                    source_format=d.format,
                    path=path,
                    volume_name=volume_name,
                    target_dev=d.target_dev,
                    created_by_vapor=False,
                )
            )
        return disks, pools

    def _locate(self, disk: DefinedDisk) -> tuple[str, str, str]:
        """Path, pool ("" if none) and volume name ("" if none) of a hard disk."""
        if disk.kind == "volume":
            try:
                return self.hv.volume(disk.pool, disk.volume).path, disk.pool, disk.volume
            except NotFound:
                return "", "", ""
        if disk.kind == "file" and disk.path:
            volume = self.hv.volume_by_path(disk.path)
            if volume is not None:
                return disk.path, self._pool_of(volume.path), volume.name
        return disk.path, "", ""

    @staticmethod
    def _cdroms(definition: DomainDefinition, left_out: list[str]) -> list[CdromAttachment]:
        """CD-ROMs holding an ISO of the library (ready, by path); the others are only reported."""
        drives = [d for d in definition.disks if d.device == "cdrom"]
        paths = {p for d in drives if d.path for p in (d.path, os.path.realpath(d.path))}
        isos = {iso.path: iso for iso in IsoImage.objects.filter(path__in=paths, status=IsoStatus.READY)}
        attachments: list[CdromAttachment] = []
        slots = list(CdromSlot)
        for drive in drives:
            iso = isos.get(drive.path) or (isos.get(os.path.realpath(drive.path)) if drive.path else None)
            if iso is None:
                left_out.append(f"CD-ROM {drive.target_dev}: " + (f"{drive.path} is not in the ISO library" if drive.path else "empty"))
            elif len(attachments) == len(slots):
                left_out.append(f"CD-ROM {drive.target_dev}: Vapor keeps {len(slots)} CD-ROMs")
            else:
                attachments.append(
                    CdromAttachment(
                        iso=iso,
                        slot=slots[len(attachments)],
                        resolved_by="adopted",
                        reference=drive.path,
                        target_dev=drive.target_dev,
                        boot_order=drive.boot_order,
                    )
                )
        return attachments


def _store(plan: _Adoption) -> str:
    """Save one adoption in a savepoint; why it was refused ("" when stored)."""
    vm = plan.vm
    if VirtualMachine.objects.filter(name=vm.name).exists():
        return "a VM of that name was stored meanwhile"
    owner = VirtualMachine.objects.filter(uuid=vm.uuid).values_list("name", flat=True).first()
    if owner is not None:
        return f"its UUID belongs to VM {owner!r} (renamed on the host?)"
    macs = [nic.mac for nic in plan.nics]
    taken = NetworkInterface.objects.filter(mac__in=macs).select_related("vm").first()
    if taken is not None:
        return f"MAC {taken.mac} is used by VM {taken.vm.name!r}"
    if len(set(macs)) != len(macs):
        return "two of its interfaces have the same MAC"
    try:
        with transaction.atomic():
            vm.save()
            for rows in (plan.disks, plan.nics, plan.cdroms):
                for row in rows:
                    row.vm = vm
            Disk.objects.bulk_create(plan.disks)
            NetworkInterface.objects.bulk_create(plan.nics)
            CdromAttachment.objects.bulk_create(plan.cdroms)
            message = f"adopted from the host: {len(plan.disks)} disk(s), {len(plan.nics)} NIC(s), {len(plan.cdroms)} CD-ROM(s)"
            if plan.left_out:
                message += "; not kept: " + "; ".join(plan.left_out)
            VmEvent.objects.create(vm=vm, step="adopted", status=EventStatus.INFO, message=message)
    except IntegrityError as exc:
        vm.pk = None
        return f"it conflicts with a VM stored meanwhile: {exc}"
    return ""
