"""Report the host's domains Vapor does not know, and adopt them as VMs on request.

`vm_sync` first refreshes every VM's state as `vms.services.states` does, then
lists the unknown domains and, with `adopt`, reads each definition into VM,
disk, NIC and CD-ROM rows. Nothing here ever deletes: no domain, no volume,
no row; an adopted VM's disks are `existing`, never Vapor's to delete.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from isos.choices import Architecture, IsoStatus
from isos.models import IsoImage
from vaporsite.errors import NotFound, VaporError
from vaporsite.transactions import atomic_or_dry_run
from vms import hypervisor
from vms.choices import CdromSlot, DiskSource, EventStatus, GraphicsType, NicType
from vms.host_models import Host, default_host_pk
from vms.hypervisor import DomainInfo, Hypervisor
from vms.hypervisor.documents.domain import parse_definition
from vms.hypervisor.specs import DefinedDisk, DomainDefinition
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services.states import log_changes, refresh_rows, status_for, synced_rows

log = logging.getLogger("vapor.vms")


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


def vm_sync(*, hv: Hypervisor | None = None, host: Host | None = None, adopt: bool = False, dry_run: bool = False) -> SyncReport:
    """Refresh the state of every VM on `host` (default: the default host) and report its domains Vapor does not know.

    `adopt` makes VMs of those domains, from their definitions, on that host:
    their disks are `existing` and not Vapor's, so deleting such a VM keeps
    every file. VM names are unique across Vapor: a domain named like a VM of
    another host is not that VM, and is not adopted. A dry run does all of it
    in a transaction that is rolled back: the report is exact and nothing is
    written. `hv` (tests, --uri): read that connection instead of the host's.
    """
    host = host or Host.objects.get(pk=default_host_pk())
    hv = hv or hypervisor.get_hypervisor(host.libvirt_uri)
    report = SyncReport(dry_run=dry_run)
    rows = synced_rows(host=host.pk)
    domains = {domain.name: domain for domain in hv.list_domains()}
    elsewhere = dict(VirtualMachine.objects.filter(name__in=list(domains)).exclude(host=host).values_list("name", "host__name"))
    known = set(VirtualMachine.objects.filter(name__in=list(domains), host=host).values_list("name", flat=True))
    report.unknown = sorted(set(domains) - known)
    plans: dict[str, _Adoption] = {}
    if adopt:
        builder = _AdoptionBuilder(hv)
        for name in report.unknown:
            if name in elsewhere:
                report.not_adopted[name] = f"VM {name} is on host {elsewhere[name]} (VM names are unique across Vapor)"
                continue
            try:
                plans[name] = builder.build(domains[name])
                plans[name].vm.host = host
            except _Refused as exc:
                report.not_adopted[name] = str(exc)
    domains = {name: domain for name, domain in domains.items() if name not in elsewhere}
    with atomic_or_dry_run(dry_run=dry_run):
        refreshed = refresh_rows(rows, domains, timezone.now())
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
        return report
    log_changes(refreshed)
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


class _AdoptionBuilder:
    """Builds the unsaved rows that adopt an unknown domain, from its definition on the host (libvirt and read-only queries)."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self._pool_paths: dict[str, str] | None = None

    def build(self, domain: DomainInfo) -> _Adoption:
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
            max_memory_mb=definition.max_memory_mib if definition.max_memory_mib > definition.memory_mib else None,
            max_vcpus=definition.max_vcpus if definition.max_vcpus > definition.vcpus else None,
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
    for disk in plan.disks:
        if disk.path and not disk.readonly:
            writer = Disk.objects.filter(path=disk.path, readonly=False).values_list("vm__name", flat=True).first()
            if writer is not None:
                return f"its disk {disk.path} is a writable disk of VM {writer!r} too (two guests writing one image)"
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
