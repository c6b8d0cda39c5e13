"""VM rules: create (and dry-run), lifecycle actions, delete."""

from __future__ import annotations

import logging
import uuid
from contextlib import suppress
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction

from isos.models import IsoImage
from projects.access import SYSTEM, Actor, audit, require
from projects.choices import Role
from projects.usage import Usage
from vaporsite.errors import Conflict, NotFound, VaporError
from vaporsite.transactions import atomic_or_dry_run
from vms import encryption, hypervisor
from vms.choices import DiskSource, EventStatus, VmStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.documents.domain import domain_xml
from vms.models import CdromAttachment, Disk, NetworkInterface, TemplateDisk, VirtualMachine, VmEvent
from vms.services import snapshots as _snapshots  # day two: snapshots
from vms.services.cloud_init import cloud_init_store, seed_files_to_delete
from vms.services.design import domain_spec
from vms.services.plans import PlannedDisk, VmPlan
from vms.services.provisioning import claim_is_live, provision_steps
from vms.services.quotas import disk_gb, quota_check
from vms.services.requests import VmRequest
from vms.services.validation import disk_in_use_message, vm_validate

log = logging.getLogger("vapor.vms")


@dataclass(frozen=True)
class DryRun:
    vm: VirtualMachine  # unsaved-in-effect: its rows were rolled back
    steps: list[str]
    xml: str  # password masked
    warnings: tuple[str, ...] = ()  # what would work but may not do what was meant (plan.warnings)
    placement: dict[str, object] | None = None  # {"host", "requested", "refused": {host: [reasons]}} (Placement.as_dict)


def vm_create(*, request: VmRequest, hv: Hypervisor | None = None, dry_run: bool = False, actor: Actor = SYSTEM) -> VirtualMachine | DryRun:
    """Validate, check the project's quotas, store the VM and queue its provisioning (202).

    A dry run does exactly the same inside a transaction that is rolled back,
    so the plan and XML it shows are the ones a real run would use, and
    nothing (no VM row, no ISO registered on the way, no task) remains.
    """
    with atomic_or_dry_run(dry_run=dry_run):
        plan = vm_validate(request=request, hv=hv, register_isos=True, actor=actor)
        assert plan.project is not None
        asked = Usage(vms=1, vcpus=plan.request.vcpus, memory_mb=plan.request.memory, disk_gb=_disk_gb(plan))
        quota_check(project=plan.project, asked=asked)
        vm = _store(plan, actor)
        if dry_run:
            vm = VirtualMachine.objects.select_related("host").prefetch_related("disks", "nics", "cdroms__iso").get(pk=vm.pk)
            chosen = plan.placement.hv if plan.placement else hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
            steps = [s.name for s in provision_steps(vm, chosen, None)] + ["record ISO use"]
            xml = domain_xml(domain_spec(vm, password=request.graphics.password), mask_secrets=True)
            placed = plan.placement.as_dict() if plan.placement else None
            return DryRun(vm=vm, steps=steps, xml=xml, warnings=plan.warnings, placement=placed)
        audit(actor, "vm.create", target=f"VM {vm.name}", project=plan.project, vm_id=vm.pk, detail=_summary(plan))
        transaction.on_commit(lambda: _enqueue(vm.pk))
    log.info("VM %s accepted (%s)", vm.name, vm.pk)
    return vm


def _disk_gb(plan: VmPlan) -> int:
    """What the VM's new volumes (new disks and clones) count against the disk quota."""
    return disk_gb([d.capacity_bytes for d in plan.disks if d.source != DiskSource.EXISTING])


def _summary(plan: VmPlan) -> str:
    made_from = f" from template {plan.template.name}" if plan.template else ""
    return (
        f"{plan.request.vcpus} vCPU(s), {plan.request.memory} MB, {len(plan.disks)} disk(s) ({_disk_gb(plan)} GB new), "
        f"{len(plan.nics)} NIC(s){made_from}"
    )


def _enqueue(vm_id: int) -> None:
    """Queue the provisioning task (after the VM's rows are committed).

    django-q2's ORM broker runs Django's close_old_connections() when it finds
    the connection in autocommit mode, and with CONN_MAX_AGE=0 that closes the
    request's connection: the rest of the request (the answer's queries) then
    opens a new one, about 15 ms on PostgreSQL. Inside a transaction it keeps the
    connection; the queued row commits at the end of the block. Tasks run
    inline (VAPOR_Q_SYNC) are not wrapped: they must not run in a transaction.
    """
    from django_q.conf import Conf
    from django_q.tasks import async_task

    if Conf.SYNC:
        async_task("vms.tasks.provision_vm", vm_id, task_name=f"provision VM {vm_id}")
        return
    with transaction.atomic():
        async_task("vms.tasks.provision_vm", vm_id, task_name=f"provision VM {vm_id}")


def _serial_log(name: str) -> str:
    directory = settings.VAPOR.serial_log_dir
    return str(directory / f"{name}.serial.log") if directory else ""


def _store(plan: VmPlan, actor: Actor) -> VirtualMachine:
    request = plan.request
    graphics = request.graphics
    # Lock the ISOs to attach, as iso_delete does: a delete racing this
    # request then either waits and sees the attachment (409 there), or has
    # already removed the row (409 here), never an attachment to a lost ISO.
    iso_ids = {c.iso.pk for c in plan.cdroms}
    if iso_ids:
        locked = set(IsoImage.objects.select_for_update().filter(pk__in=iso_ids).values_list("pk", flat=True))
        if gone := sorted(iso_ids - locked):
            raise Conflict(f"ISO {', '.join(gone)} was deleted while the VM was being created", code="iso_deleted")
    try:
        with transaction.atomic():
            vm = VirtualMachine.objects.create(
                name=request.name,
                project=plan.project,
                **({"host": plan.placement.host} if plan.placement else {}),
                disk_gb=_disk_gb(plan),
                uuid=uuid.uuid4(),
                memory_mb=request.memory,
                vcpus=request.vcpus,
                max_memory_mb=request.max_memory,
                max_vcpus=request.max_vcpus,
                os_type=plan.os_type,
                os_variant=request.os_variant,
                architecture=request.architecture,
                virt_type=plan.virt_type,
                machine=plan.machine,
                uefi=request.uefi,
                secure_boot=request.secure_boot,
                tpm=request.tpm,
                storage_pool=plan.pool.name,
                autostart=request.autostart,
                graphics_type=graphics.type,
                graphics_port=graphics.port,
                graphics_listen=settings.VAPOR.graphics_listen,
                graphics_password_encrypted=encryption.encrypt(graphics.password) if graphics.password else "",
                graphics_password_set=bool(graphics.password),
                serial_log=request.serial_log or _serial_log(request.name),
                status=VmStatus.PROVISIONING,
                template=plan.template,
            )
    except IntegrityError:
        raise Conflict(f"a VM named {request.name!r} already exists", field="name", code="name_taken") from None
    _store_disks(vm, plan)
    NetworkInterface.objects.bulk_create(
        NetworkInterface(vm=vm, order=n.order, type=n.type, source=n.source, model=n.model, mac=n.mac) for n in plan.nics
    )
    CdromAttachment.objects.bulk_create(
        CdromAttachment(
            vm=vm, iso=c.iso, slot=c.slot, resolved_by=c.rule, reference=c.reference, target_dev=c.target_dev, boot_order=c.boot_order
        )
        for c in plan.cdroms
    )
    cloud_init_store(vm=vm, planned=plan.cloud_init)
    made_from = f" from template {plan.template.name}" if plan.template else ""
    VmEvent.objects.create(
        vm=vm,
        step="accepted",
        status=EventStatus.INFO,
        message=f"{len(plan.disks)} disk(s), {len(plan.nics)} NIC(s){made_from}",
        user=actor.user,
        source_address=actor.source_address,
    )
    return vm


def disk_row(vm: VirtualMachine, d: PlannedDisk) -> Disk:
    """The (unsaved) row of a planned disk: creation and a later attach store disks alike."""
    return Disk(
        vm=vm,
        order=d.order,
        source=d.source,
        size_gb=d.size_gb,
        format=d.format,
        bus=d.bus,
        boot_order=d.boot_order,
        readonly=d.readonly,
        linked=d.linked,
        source_path=d.source_path,
        source_format=d.source_format,
        path=d.path,
        volume_name=d.volume_name,
        target_dev=d.target_dev,
        source_chain=d.source_chain,
        created_by_vapor=d.source != DiskSource.EXISTING,
    )


def _store_disks(vm: VirtualMachine, plan: VmPlan) -> None:
    """The disks' rows. A file another request attached writable after this one was
    validated trips the constraint `disk_writable_path_unique`: the same 409 as validation's."""
    try:
        with transaction.atomic():
            Disk.objects.bulk_create(disk_row(vm, d) for d in plan.disks)
    except IntegrityError:
        for d in plan.disks:
            if d.path and not d.readonly:
                holders = sorted(set(Disk.objects.filter(path=d.path, readonly=False).values_list("vm__name", "vm__status")))
                if holders:
                    field = f"disks.{d.order}" + (".path" if d.source == DiskSource.EXISTING else "")
                    raise Conflict(disk_in_use_message(d.path, holders), field=field, code="disk_in_use") from None
        raise


# --- lifecycle ----------------------------------------------------------------

ACTIONS = {
    "start": ("start_domain", VmStatus.RUNNING),
    "stop": ("shutdown_domain", None),  # ACPI: the guest decides when it is off
    "force-stop": ("destroy_domain", VmStatus.STOPPED),
    "reboot": ("reboot_domain", None),
}


def vm_action(*, vm: VirtualMachine, action: str, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> VirtualMachine:
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    if vm.status == VmStatus.UNKNOWN:  # its host did not answer at the last refresh: ask it once more, else refuse
        try:
            hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
            vm_sync_state(vm=vm, hv=hv)
        except VaporError as exc:
            raise Conflict(
                f"VM {vm.name}'s host {vm.host.name} does not answer ({exc.message}); {action} is not possible until it is back",
                code="host_down",
                host=vm.host.name,
            ) from exc
    if vm.status == VmStatus.MISSING:
        raise Conflict(
            f"VM {vm.name} is missing: its domain is gone from the host, so {action} is not possible; "
            "run `manage.py sync_vms` once it is back, or delete the VM",
            code="vm_missing",
        )
    if vm.status in (VmStatus.PROVISIONING, VmStatus.DELETING, VmStatus.FAILED):
        raise Conflict(f"VM {vm.name} is {vm.status}; {action} is not possible", code="vm_busy")
    from vms.services.migration import migration_busy  # several hosts: live migration

    if (busy := migration_busy(vm)) is not None:
        raise busy
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    method, status = ACTIONS[action]
    getattr(hv, method)(vm.name)
    VmEvent.objects.create(vm=vm, step=action, status=EventStatus.DONE, user=actor.user, source_address=actor.source_address)
    audit(actor, f"vm.{action}", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk)
    if status:
        VirtualMachine.objects.filter(pk=vm.pk).update(status=status)
    vm.refresh_from_db()
    with suppress(VaporError):  # the action worked; the stored state is only a convenience
        vm_sync_state(vm=vm, hv=hv)
    return vm


def vm_sync_state(*, vm: VirtualMachine, hv: Hypervisor) -> str:
    """The live domain state ("missing" without a domain), stored on the VM with
    the running/stopped/missing status it means (`vms.services.states`)."""
    from vms.services.states import SYNCED_STATUSES, vm_record_state

    if vm.status not in SYNCED_STATUSES:
        return ""
    try:
        state: str | None = hv.domain_state(vm.name)
    except NotFound:
        state = None
    vm_record_state(vm=vm, state=state)
    return state or "missing"


def vm_allowed_actions(*, vm: VirtualMachine) -> list[str]:
    """The lifecycle actions (keys of `ACTIONS`) the VM's stored status allows, in the order a page shows them:
    a stopped VM can be started; a running one shut down, forced off or rebooted; one being provisioned or
    deleted, failed or missing none (`vm_action` refuses those). Whether the user may is the caller's check."""
    if vm.status == VmStatus.STOPPED:
        return ["start"]
    if vm.status == VmStatus.RUNNING:
        return ["stop", "force-stop", "reboot"]
    return []


@dataclass(frozen=True)
class PlannedFile:
    """A file a delete erases or keeps: its path ("" when libvirt alone knows it) and what it is, in words."""

    path: str
    what: str


@dataclass(frozen=True)
class DeletePlan:
    """What `vm_delete` will do to a VM, before it does it: shown on the confirmation pages."""

    domain: str  # destroyed if running, then undefined
    keep_disks: bool
    erased: list[PlannedFile]
    kept: list[PlannedFile]
    volumes: list[str]  # the volumes to delete from the VM's pool
    refusal: Conflict | None  # why the delete may not go ahead; None when it may

    @property
    def refused(self) -> str:
        return self.refusal.message if self.refusal else ""


def vm_delete_plan(*, vm: VirtualMachine, keep_disks: bool = False) -> DeletePlan:
    """The domain to undefine, the files erased (the volumes Vapor created, unless `keep_disks`; the UEFI
    variables and TPM state libvirt keeps beside the definition) and those kept (existing disks, clone
    sources, ISOs; every disk with `keep_disks`), and the refusal `vm_delete` would raise."""
    erased: list[PlannedFile] = []
    kept: list[PlannedFile] = []
    volumes: list[str] = []
    for disk in vm.disks.all():
        where = disk.path or disk.volume_name
        if disk.created_by_vapor:
            made = "a clone Vapor made" if disk.source == DiskSource.CLONE else "a volume Vapor created"
            if keep_disks:
                kept.append(PlannedFile(where, f"disk {disk.target_dev}, {made} (Keep disks)"))
            else:
                erased.append(PlannedFile(where, f"disk {disk.target_dev}, {made}"))
                if disk.volume_name:
                    volumes.append(disk.volume_name)
        else:
            kept.append(PlannedFile(where, f"disk {disk.target_dev}, an existing file: never erased"))
        if disk.source == DiskSource.CLONE and disk.source_path:
            role = "backing file" if disk.linked else "source"
            kept.append(PlannedFile(disk.source_path, f"the {role} of disk {disk.target_dev}'s clone"))
    for cdrom in vm.cdroms.select_related("iso"):
        kept.append(PlannedFile(cdrom.iso.path, f"ISO in CD-ROM {cdrom.target_dev or cdrom.slot}: stays in the ISO library"))
    for path, what, volume in seed_files_to_delete(vm):
        erased.append(PlannedFile(path, what))
        volumes.append(volume)
    if vm.uefi:
        erased.append(PlannedFile("", "the UEFI variables (NVRAM) libvirt keeps for the domain"))
    if vm.tpm:
        erased.append(PlannedFile("", "the TPM state (swtpm) libvirt keeps for the domain"))
    snapshot_files, snapshot_volumes = _snapshots.vm_snapshot_delete_plan(vm=vm)  # day two: snapshots
    erased += [PlannedFile(where, what) for where, what in snapshot_files]
    volumes += snapshot_volumes
    return DeletePlan(
        domain=vm.name,
        keep_disks=keep_disks,
        erased=erased,
        kept=kept,
        volumes=volumes,
        refusal=_delete_refusal(vm, keep_disks),
    )


def _delete_refusal(vm: VirtualMachine, keep_disks: bool) -> Conflict | None:
    if vm.status == VmStatus.PROVISIONING and claim_is_live(vm):
        return Conflict(f"VM {vm.name} is being provisioned; delete it when that has finished", code="vm_busy")
    from vms.services.migration import migration_busy  # several hosts: live migration

    if (busy := migration_busy(vm)) is not None:
        return busy
    if not keep_disks:
        try:
            _refuse_if_a_linked_clone_base(vm)
        except Conflict as exc:
            return exc
    return None


def _delete_row(vm: VirtualMachine) -> None:
    """Delete the VM's row and its dependants, holding the row first: an event written meanwhile (a console
    session ending as the domain goes) then waits, and finds the VM gone, instead of failing the delete."""
    with transaction.atomic():
        VirtualMachine.objects.select_for_update().filter(pk=vm.pk).exists()
        vm.delete()


def vm_delete(*, vm: VirtualMachine, keep_disks: bool = False, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> DeletePlan:
    """Do what `vm_delete_plan` says: destroy and undefine the domain (NVRAM and TPM state too), delete the
    volumes Vapor created unless `keep_disks`; existing disks, clone sources and ISOs are never touched."""
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    plan = vm_delete_plan(vm=vm, keep_disks=keep_disks)
    if plan.refusal is not None:
        raise plan.refusal
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    VirtualMachine.objects.filter(pk=vm.pk).update(status=VmStatus.DELETING)
    try:
        _snapshots.vm_snapshots_discard(vm=vm, hv=hv)  # day two: snapshots
        hv.undefine_domain(plan.domain)
        for volume in plan.volumes:
            with suppress(NotFound):  # never created, or rolled back
                hv.delete_volume(vm.storage_pool, volume)
    except VaporError as exc:
        VirtualMachine.objects.filter(pk=vm.pk).update(status=VmStatus.FAILED, error=f"delete failed: {exc.message}")
        raise
    audit(actor, "vm.delete", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail="disks kept" if keep_disks else "")
    _delete_row(vm)
    log.info("deleted VM %s (disks kept: %s)", vm.name, keep_disks)
    return plan


def _refuse_if_a_linked_clone_base(vm: VirtualMachine) -> None:
    """409 when a volume Vapor made for `vm` backs another VM's linked clone or
    is a template's linked base: deleting it would leave those overlays
    without their backing file."""
    paths = {p for p in vm.disks.filter(created_by_vapor=True).exclude(path="").values_list("path", flat=True)}
    if not paths:
        return
    clones = sorted(
        set(
            Disk.objects.filter(linked=True, source_path__in=paths)
            .exclude(vm=vm)
            .exclude(vm__status__in=[VmStatus.FAILED, VmStatus.DELETING])
            .values_list("vm__name", flat=True)
        )
    )
    templates = sorted(set(TemplateDisk.objects.filter(linked=True, clone_from__in=paths).values_list("template__name", flat=True)))
    if not clones and not templates:
        return
    users = [f"VM {name}" for name in clones] + [f"template {name}" for name in templates]
    raise Conflict(
        f"VM {vm.name} has a disk that backs the linked clones of {', '.join(users)}; "
        "delete those first or keep the disks (keep_disks=true)",
        code="disk_in_use",
    )
