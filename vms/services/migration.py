"""Live migration of a running VM to another host (issue 15 point 6).

`vm_migrate` checks the request and queues the move; the task
(`vms.tasks.migrate_vm` -> `vm_migration_run`) asks the source's libvirtd to
migrate the domain peer to peer (`Hypervisor.migrate_domain`), stores its
progress on the `VmMigration` row, and aborts it when a cancel is asked.

Who may: an operator of the VM's project, to any host that placement could
use now (enabled, not in maintenance, not recorded down) and whose budget
(memory x overcommit, vCPUs x overcommit, minus its live VMs) takes the VM.
Moving a VM onto a host is what placement already lets an operator do when
creating one; the admin's levers (disable a host, maintenance) stay the way
to keep VMs off a host.

Refused before anything is queued (HTTP status, code):
- the VM not running (409 `vm_not_running`). Moving a stopped VM (a "cold
  move": copy its files, define it there) is not done here;
- `host` unknown (404 `host_not_found`), the VM's own host (400), not usable
  now (409 `host_unavailable`) or full (409 `host_full`): placement's words;
- another migration of the VM queued or running (409 `migration_in_progress`);
- snapshots (409 `has_snapshots`): libvirt moves a domain's snapshot metadata
  with no migration flag, and QEMU's internal snapshots (with their memory
  state) would need to come along inside every qcow2 disk; delete them first;
- read-only media the destination lacks at the same path (409
  `readonly_media`): ISOs in CD-ROM drives, the cloud-init seed, read-only
  disks. libvirt never copies read-only disks. Eject them first (the seed
  stays: such a VM cannot move unless its seed is at the same path there);
- storage (409 `destination_storage`): with `copy_storage`, the destination
  needs a storage pool in the directory of each writable disk, and must not
  hold a file at that path already (libvirt would write the copy over it);
  without it, every writable disk must be visible there already (shared).
  A UEFI VM's variables file (NVRAM) and an emulated TPM's state directory
  must not be on the destination already: the migration writes the guest's
  over them, and the source's are removed afterwards, which a directory both
  hosts share would lose;
- a disk of the VM that backs another VM's linked clone or a template
  (409 `disk_in_use`, copy_storage only): its file is removed from the source
  afterwards, which would leave those without their backing file.

A UEFI VM (Secure Boot or not) moves with its variables, and an emulated TPM
with its state: QEMU carries both in the migration stream, into the
destination's NVRAM file at the same path and the destination's swtpm
(vms/hypervisor/migration.py). libvirt removes the source's TPM state itself.

After a successful copy-storage migration the source keeps its copy of the
disks (libvirt undefines the domain, not its files): Vapor deletes the
volumes it created itself (`Disk.created_by_vapor`, as `vm_delete` would);
existing disks given by path are never touched (the VM now uses the copy
at the same path on the destination). The source's NVRAM file stays behind
too, with or without copy_storage: Vapor removes it (as `vm_delete` would),
if the destination had no file at that path before the move. A failed or
cancelled migration leaves the volumes libvirt made on the destination, and
its NVRAM file: Vapor removes those it saw absent before the migration
began; the source keeps everything.
"""

from __future__ import annotations

import logging
import os.path
import time
from contextlib import suppress
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from projects.access import SYSTEM, Actor, audit, require
from projects.choices import Role, Via
from vaporsite.deliveries import give_up_reason, start_delivery
from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError
from vms import hypervisor
from vms.choices import EventStatus, VmStatus
from vms.host_models import Host
from vms.hypervisor import Hypervisor, JobProgress
from vms.migration_models import UNFINISHED_MIGRATIONS, MigrationStatus, VmMigration
from vms.models import VirtualMachine, VmEvent, VmSnapshot
from vms.services.iso_copies import host_is_local, iso_on_host
from vms.services.placement import HostUse, budget_reasons, host_usage, unavailable_reason
from vms.services.requests import VmRequest

log = logging.getLogger("vapor.vms")

STEP = "migrate"


class MigrationCancelled(Exception):
    """Raised from the progress callback when a cancel was asked: the adapter aborts the job."""


def migration_timeout() -> float:
    """How long one migration may take before it is aborted: two thirds of the task timeout (VAPOR_TASK_TIMEOUT)."""
    return settings.VAPOR.q_timeout * 2 / 3


def dest_address(host: Host) -> str | None:
    """The host part of the destination's URI: where QEMU's migration stream goes (None for a local URI)."""
    return urlsplit(host.libvirt_uri).hostname or None


# --- reading ----------------------------------------------------------------------------


def vm_migration_list(*, vm: VirtualMachine) -> list[VmMigration]:
    """The VM's migrations, newest first."""
    return list(VmMigration.objects.filter(vm=vm).select_related("source", "destination").order_by("-created_at", "-id"))


def vm_migration_get(*, vm: VirtualMachine, migration_id: int) -> VmMigration:
    try:
        return VmMigration.objects.select_related("source", "destination").get(vm=vm, pk=migration_id)
    except VmMigration.DoesNotExist:
        raise NotFound(f"VM {vm.name} has no migration {migration_id}", field="migration", code="migration_not_found") from None


def vm_migration_current(*, vm: VirtualMachine) -> VmMigration | None:
    """The VM's queued or running migration, if any."""
    return VmMigration.objects.select_related("source", "destination").filter(vm=vm, status__in=UNFINISHED_MIGRATIONS).first()


def migration_busy(vm: VirtualMachine) -> Conflict | None:
    """409 `migration_in_progress` while the VM has a queued or running migration (delete and power actions ask)."""
    current = VmMigration.objects.filter(vm=vm, status__in=UNFINISHED_MIGRATIONS).select_related("destination").first()
    if current is None:
        return None
    return Conflict(
        f"VM {vm.name} is being migrated to {current.destination.name} (migration {current.pk}); wait for it or cancel it",
        code="migration_in_progress",
    )


def migration_refusal(*, vm: VirtualMachine, host: Host) -> str:
    """Why `vm` may not go to `host` now, in words ("" when it may): the admin's destination list uses it.
    Only the checks that need no hypervisor call (the rest is asked when the migration is requested)."""
    if host.pk == vm.host_id:
        return "the VM's own host"
    reason = unavailable_reason(host)
    if reason:
        return reason
    return ""


# --- asking for one ---------------------------------------------------------------------


def vm_migrate(*, vm: VirtualMachine, host: str, copy_storage: bool = True, actor: Actor = SYSTEM) -> VmMigration:
    """Check the move (module docstring) and queue it; the row is `queued` and the task runs at commit."""
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    with transaction.atomic():
        vm = VirtualMachine.objects.select_for_update().select_related("host", "project").get(pk=vm.pk)
        if vm.status != VmStatus.RUNNING:
            raise Conflict(
                f"VM {vm.name} is {vm.status}: only a running VM can be migrated (live migration); moving a stopped VM is not supported",
                code="vm_not_running",
            )
        dest = Host.objects.filter(name=host).first()
        if dest is None:
            raise NotFound(f"host {host!r} does not exist", field="host", code="host_not_found")
        if dest.pk == vm.host_id:
            raise InvalidInput(f"VM {vm.name} already runs on host {dest.name}", field="host", code="same_host")
        reason = unavailable_reason(dest)
        if reason:
            raise Conflict(f"host {dest.name} does not take VMs now: {reason}", field="host", code="host_unavailable")
        if VmMigration.objects.filter(vm=vm, status__in=UNFINISHED_MIGRATIONS).exists():
            raise Conflict(f"VM {vm.name} is being migrated already", code="migration_in_progress")
        snapshots = sorted(VmSnapshot.objects.filter(vm=vm).values_list("name", flat=True))
        if snapshots:
            raise Conflict(
                f"VM {vm.name} has snapshots ({', '.join(snapshots)}): a live migration cannot take them along; delete them first",
                code="has_snapshots",
            )
        if copy_storage:
            from vms.services.lifecycle import _refuse_if_a_linked_clone_base

            _refuse_if_a_linked_clone_base(vm)
        dest_hv = hypervisor.get_hypervisor(dest.libvirt_uri)
        _check_media(vm, dest, dest_hv)
        _check_storage(vm, dest, dest_hv, copy_storage=copy_storage)
        if vm.uefi or vm.tpm:
            _check_firmware_state(vm, dest, dest_hv)
        request = VmRequest(name=vm.name, memory=vm.memory_mb, vcpus=vm.vcpus)
        reasons, _left = budget_reasons(dest, request, dest_hv, host_usage([dest]).get(dest.pk, HostUse()))
        if reasons:
            raise Conflict(f"host {dest.name} is full: {'; '.join(reasons)}", field="host", code="host_full")
        try:
            with transaction.atomic():
                migration = VmMigration.objects.create(
                    vm=vm, source=vm.host, destination=dest, copy_storage=copy_storage, requested_by=actor.user
                )
        except IntegrityError:
            raise Conflict(f"VM {vm.name} is being migrated already", code="migration_in_progress") from None
        storage = "copying its disks" if copy_storage else "shared storage"
        _event(vm, EventStatus.INFO, f"migration {migration.pk} to {dest.name} queued ({storage})", actor)
        audit(actor, "vm.migrate", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=f"{vm.host.name} -> {dest.name}")
        transaction.on_commit(lambda: _enqueue(migration.pk))
    log.info("migration %s of %s from %s to %s queued", migration.pk, vm.name, vm.host.name, dest.name)
    return migration


def _check_media(vm: VirtualMachine, dest: Host, dest_hv: Hypervisor) -> None:
    """Read-only files (ISOs, the cloud-init seed, read-only disks) must be at the same path on the destination."""
    from vms.services.cloud_init import seed_of

    # An ISO of a VM on a remote host is that host's copy, at the same path on every remote host: the task
    # copies it to a remote destination before the move (`_isos_to_destination`); other paths must be there.
    follows = not host_is_local(vm.host) and not host_is_local(dest)
    media = [(c.iso.path, f"ISO {c.iso_id} in CD-ROM {c.target_dev or c.slot}") for c in vm.cdroms.select_related("iso") if not follows]
    seed = seed_of(vm)
    if seed is not None:
        media.append((seed.path, f"the cloud-init seed in CD-ROM {seed.target_dev}"))
    media += [(d.path, f"read-only disk {d.target_dev}") for d in vm.disks.filter(readonly=True) if d.path]
    missing = [f"{what} ({path})" for path, what in media if dest_hv.volume_by_path(path) is None]
    if missing:
        raise Conflict(
            f"host {dest.name} lacks read-only media of VM {vm.name} at the same path, and a migration does not copy them: "
            f"{'; '.join(missing)}. Eject them first",
            code="readonly_media",
        )


def _check_storage(vm: VirtualMachine, dest: Host, dest_hv: Hypervisor, *, copy_storage: bool) -> None:
    pool_dirs = {os.path.normpath(p) for p in dest_hv.pool_paths().values()}
    problems = []
    for disk in vm.disks.filter(readonly=False):
        if not disk.path:
            continue
        there = dest_hv.volume_by_path(disk.path)
        if copy_storage:
            if os.path.normpath(os.path.dirname(disk.path)) not in pool_dirs:
                problems.append(f"disk {disk.target_dev}: no storage pool in {os.path.dirname(disk.path)}")
            elif there is not None:
                problems.append(f"disk {disk.target_dev}: a file is at {disk.path} there already (the copy would overwrite it)")
        elif there is None:
            problems.append(f"disk {disk.target_dev}: {disk.path} is not visible there (no shared storage; copy the disks)")
    if problems:
        raise Conflict(f"host {dest.name} cannot hold the disks of VM {vm.name}: {'; '.join(problems)}", code="destination_storage")


def _check_firmware_state(vm: VirtualMachine, dest: Host, dest_hv: Hypervisor) -> None:
    """The destination must hold nothing where the VM keeps its UEFI variables or its TPM state (the same paths there)."""
    source_hv = hypervisor.get_hypervisor(vm.host.libvirt_uri)
    paths = [
        (path, what)
        for path, what in (
            (source_hv.nvram_path(vm.name) if vm.uefi else "", "its UEFI variables"),
            (source_hv.tpm_state_path(vm.name) if vm.tpm else "", "its TPM state"),
        )
        if path
    ]
    there = [f"{path} ({what})" for path, what in paths if dest_hv.host_file_exists(path)]
    if there:
        raise Conflict(
            f"host {dest.name} holds a file where VM {vm.name} keeps {'; '.join(there)}: the migration would write over it "
            "(another domain's, or a directory both hosts share)",
            code="destination_storage",
        )


def _enqueue(migration_id: int) -> None:
    """Queue the task after the row is committed (as provisioning does: inside a transaction unless run inline)."""
    from django_q.conf import Conf
    from django_q.tasks import async_task

    if Conf.SYNC:
        async_task("vms.tasks.migrate_vm", migration_id, task_name=f"migrate {migration_id}")
        return
    with transaction.atomic():
        async_task("vms.tasks.migrate_vm", migration_id, task_name=f"migrate {migration_id}")


def vm_migration_cancel(*, migration: VmMigration, actor: Actor = SYSTEM) -> VmMigration:
    """Ask a queued or running migration to stop (409 `migration_finished` once it ended). A queued one is
    cancelled at once; a running one is aborted by its worker at its next progress poll (within a second)."""
    vm = migration.vm
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    with transaction.atomic():
        row = VmMigration.objects.select_for_update().get(pk=migration.pk)
        if row.finished:
            raise Conflict(f"migration {row.pk} of VM {vm.name} is {row.status} already", code="migration_finished")
        if row.status == MigrationStatus.QUEUED:
            VmMigration.objects.filter(pk=row.pk).update(
                cancel_requested=True, status=MigrationStatus.CANCELLED, error="cancelled before it started", finished_at=timezone.now()
            )
            _event(vm, EventStatus.INFO, f"migration {row.pk} cancelled before it started", actor)
        else:
            VmMigration.objects.filter(pk=row.pk).update(cancel_requested=True)
            _event(vm, EventStatus.INFO, f"migration {row.pk}: cancel asked", actor)
        audit(actor, "vm.migrate.cancel", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=f"migration {row.pk}")
    return VmMigration.objects.select_related("source", "destination", "vm").get(pk=migration.pk)


def _event(vm: VirtualMachine, status: str, message: str, actor: Actor = SYSTEM) -> None:
    VmEvent.objects.create(vm=vm, step=STEP, status=status, message=message, user=actor.user, source_address=actor.source_address)


# --- the task ---------------------------------------------------------------------------


def _claim(migration_id: int) -> str:
    """Take the task: "run" (queued), "reconcile" (a running one whose worker stopped long ago), or "" (another
    delivery has it, or it is finished)."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.VAPOR.q_timeout)
    rows = VmMigration.objects.filter(pk=migration_id)
    if start_delivery(rows.filter(status=MigrationStatus.QUEUED), claimed_at=now, status=MigrationStatus.RUNNING, started_at=now):
        return "run"
    if start_delivery(
        rows.filter(status=MigrationStatus.RUNNING).filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale)), claimed_at=now
    ):
        return "reconcile"
    return ""


def vm_migration_run(*, migration_id: int) -> None:
    """The task: migrate, store progress, honour a cancel; move the VM's host only once it runs there."""
    how = _claim(migration_id)
    if not how:
        return
    migration = VmMigration.objects.select_related("vm", "vm__host", "source", "destination", "requested_by").get(pk=migration_id)
    vm, source, dest = migration.vm, migration.source, migration.destination
    actor = Actor(user=migration.requested_by, via=Via.COMMAND)
    if how == "reconcile":
        _reconcile(migration, actor)
        return
    message = give_up_reason(migration.attempts, "the migration")
    if message:
        _finish(migration, MigrationStatus.FAILED, message, actor)
        return
    try:
        source_hv = hypervisor.get_hypervisor(source.libvirt_uri)
    except VaporError as exc:
        _finish(migration, MigrationStatus.FAILED, exc.message, actor)
        return
    dest_hv: Hypervisor | None = None
    made_there: list[str] = []  # what libvirt will create on the destination (absent now): removed again on failure
    nvram = ""  # the UEFI variables' file, at the same path on both hosts
    nvram_made_there = False
    if vm.uefi:
        try:
            nvram = source_hv.nvram_path(vm.name)
        except VaporError as exc:  # the migration says how the source is
            log.warning("migration %s: the UEFI variables of %s on %s cannot be found: %s", migration.pk, vm.name, source.name, exc.message)
    try:
        dest_hv = hypervisor.get_hypervisor(dest.libvirt_uri)
        if migration.copy_storage:
            paths = [d.path for d in vm.disks.filter(readonly=False).exclude(path="")]
            made_there = [path for path in paths if dest_hv.volume_by_path(path) is None]
        nvram_made_there = bool(nvram) and not dest_hv.host_file_exists(nvram)
    except VaporError as exc:  # the source's libvirtd connects to it itself: let it try, and say how that ended
        log.warning("migration %s: the portal cannot reach %s: %s", migration.pk, dest.name, exc.message)
    nvram_there = nvram if nvram_made_there else ""
    started = time.monotonic()
    try:
        _isos_to_destination(vm, dest, dest_hv)
    except VaporError as exc:
        words = f"the VM's ISOs could not be copied to {dest.name}: {exc.message}"
        _finish(migration, MigrationStatus.FAILED, words, actor, source_hv=source_hv)
        return
    _event(vm, EventStatus.INFO, f"migration {migration.pk} to {dest.name} started")
    try:
        source_hv.migrate_domain(
            vm.name,
            dest.libvirt_uri,
            copy_storage=migration.copy_storage,
            dest_address=dest_address(dest),
            timeout_s=migration_timeout(),
            progress=lambda job: _progress(migration.pk, job),
        )
    except MigrationCancelled:
        _remove_leftovers(dest_hv, vm, made_there, nvram_there)
        _finish(migration, MigrationStatus.CANCELLED, "cancelled", actor, source_hv=source_hv)
        return
    except Exception as exc:
        _remove_leftovers(dest_hv, vm, made_there, nvram_there)
        words = exc.message if isinstance(exc, VaporError) else f"{type(exc).__name__}: {exc}"
        _finish(migration, MigrationStatus.FAILED, words, actor, source_hv=source_hv)
        return
    _succeed(migration, actor, source_hv, took=time.monotonic() - started, nvram=nvram, nvram_made_there=nvram_made_there)


def _isos_to_destination(vm: VirtualMachine, dest: Host, dest_hv: Hypervisor | None) -> None:
    """Between remote hosts, the ISOs in the VM's CD-ROMs are the hosts' checked copies (vms.services.iso_copies),
    at the same path on each: make sure the destination has its copy (made once, reused) before the move."""
    if host_is_local(vm.host) or host_is_local(dest):
        return
    for cdrom in vm.cdroms.select_related("iso"):
        path = iso_on_host(iso=cdrom.iso, host=dest, hv=dest_hv)
        _event(vm, EventStatus.INFO, f"ISO {cdrom.iso_id} is on {dest.name} ({path})")


def _progress(migration_id: int, job: JobProgress) -> None:
    """Store how far it got (each poll of the adapter, about twice a second); raise to abort when a cancel was asked."""
    VmMigration.objects.filter(pk=migration_id).update(
        processed_bytes=job.processed_bytes, total_bytes=job.total_bytes, progress_at=timezone.now()
    )
    if VmMigration.objects.filter(pk=migration_id, cancel_requested=True).exists():
        raise MigrationCancelled()


def _succeed(
    migration: VmMigration, actor: Actor, source_hv: Hypervisor, *, took: float, nvram: str = "", nvram_made_there: bool = False
) -> None:
    vm, source, dest = migration.vm, migration.source, migration.destination
    now = timezone.now()
    with transaction.atomic():
        # status too: a state refresh of the source in the moment between libvirt finishing and this may have said "missing"
        VirtualMachine.objects.filter(pk=vm.pk).update(host=dest, status=VmStatus.RUNNING, state="running", state_checked_at=now)
        VmMigration.objects.filter(pk=migration.pk).update(
            status=MigrationStatus.SUCCEEDED, finished_at=now, error="", processed_bytes=_at_least_processed(migration)
        )
        _event(vm, EventStatus.DONE, f"migrated from {source.name} to {dest.name} in {took:.1f} s")
        audit(actor, "vm.migrated", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=f"{source.name} -> {dest.name}")
    log.info("migrated %s from %s to %s in %.1f s", vm.name, source.name, dest.name, took)
    if migration.copy_storage:
        _remove_source_volumes(migration, source_hv)
    if nvram:
        _remove_source_nvram(migration, source_hv, nvram, made_there=nvram_made_there)


def _at_least_processed(migration: VmMigration) -> int:
    row = VmMigration.objects.values("processed_bytes", "total_bytes").get(pk=migration.pk)
    return max(row["processed_bytes"], row["total_bytes"])


def _remove_source_volumes(migration: VmMigration, source_hv: Hypervisor) -> None:
    """The source's copy of the volumes Vapor created (libvirt leaves them); existing disks are never touched."""
    vm = migration.vm
    removed, kept = [], []
    for disk in vm.disks.filter(readonly=False).order_by("order"):
        if disk.created_by_vapor and disk.volume_name:
            try:
                source_hv.delete_volume(vm.storage_pool, disk.volume_name)
                removed.append(disk.volume_name)
            except NotFound:
                continue
            except VaporError as exc:
                _event(vm, EventStatus.FAILED, f"could not remove {disk.volume_name} from {migration.source.name}: {exc.message}")
        elif disk.path:
            kept.append(disk.path)
    if removed or kept:
        words = f"removed the source's copy on {migration.source.name}: {', '.join(removed) or 'none'}"
        if kept:
            words += f"; kept (not Vapor's): {', '.join(kept)}"
        _event(vm, EventStatus.INFO, words)


def _remove_source_nvram(migration: VmMigration, source_hv: Hypervisor, path: str, *, made_there: bool) -> None:
    """The source's NVRAM file (libvirt leaves it): removed once the VM runs on the destination with its own copy,
    unless the destination had that file before (a directory both hosts see) or could not be asked."""
    vm, source = migration.vm, migration.source
    if not made_there:
        why = "the destination had a file there before the move, or could not be asked"
        _event(vm, EventStatus.INFO, f"kept its UEFI variables on {source.name} ({path}): {why}")
        return
    try:
        if source_hv.domain_exists(vm.name):
            _event(vm, EventStatus.FAILED, f"kept its UEFI variables on {source.name} ({path}): a domain {vm.name} is defined there")
            return
        removed = source_hv.delete_host_file(path)
    except VaporError as exc:
        _event(vm, EventStatus.FAILED, f"could not remove its UEFI variables ({path}) from {source.name}: {exc.message}")
        return
    if removed:
        _event(vm, EventStatus.INFO, f"removed the source's copy of its UEFI variables on {source.name}: {path}")


def _remove_leftovers(dest_hv: Hypervisor | None, vm: VirtualMachine, paths: list[str], nvram: str = "") -> None:
    """Files a failed migration left on the destination, among those absent before it began: the disks libvirt
    made there (copy_storage) and the NVRAM file libvirt made there from the firmware's template."""
    if dest_hv is None:
        return
    if nvram:
        with suppress(VaporError):
            if not dest_hv.domain_exists(vm.name):
                dest_hv.delete_host_file(nvram)
    for path in paths:
        with suppress(VaporError):
            found = dest_hv.volume_by_path(path)
            if found is None:
                continue
            pool = next((name for name, where in dest_hv.pool_paths().items() if os.path.normpath(where) == os.path.dirname(path)), None)
            if pool is not None and not dest_hv.domain_exists(vm.name):
                dest_hv.delete_volume(pool, found.name)


def _finish(migration: VmMigration, status: str, error: str, actor: Actor, *, source_hv: Hypervisor | None = None) -> None:
    """Failed or cancelled: the VM stays on the source; say whether it still runs there."""
    vm, source = migration.vm, migration.source
    still = ""
    if source_hv is not None:
        try:
            still = f"; VM {vm.name} {source_hv.domain_state(vm.name)} on {source.name}"
        except VaporError as exc:
            still = f"; its state on {source.name} could not be read: {exc.message}"
    VmMigration.objects.filter(pk=migration.pk).update(status=status, error=error, finished_at=timezone.now())
    what = "cancelled" if status == MigrationStatus.CANCELLED else "failed"
    _event(
        vm, EventStatus.FAILED if status == MigrationStatus.FAILED else EventStatus.INFO, f"migration {migration.pk} {what}: {error}{still}"
    )
    audit(actor, f"vm.migrate.{what}", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=error[:500])
    log.warning("migration %s of %s %s: %s", migration.pk, vm.name, what, error)


def _reconcile(migration: VmMigration, actor: Actor) -> None:
    """A running migration whose worker stopped: where does the domain run now?"""
    vm, dest = migration.vm, migration.destination
    try:
        there = hypervisor.get_hypervisor(dest.libvirt_uri).domain_exists(vm.name)
        source_hv = hypervisor.get_hypervisor(migration.source.libvirt_uri)
        here = source_hv.domain_exists(vm.name)
    except VaporError as exc:
        _finish(migration, MigrationStatus.FAILED, f"the worker stopped and the hosts could not be asked: {exc.message}", actor)
        return
    if there and not here:
        nvram = ""
        if vm.uefi:
            with suppress(VaporError):
                nvram = hypervisor.get_hypervisor(dest.libvirt_uri).nvram_path(vm.name)
        _succeed(migration, actor, source_hv, took=0.0, nvram=nvram)  # whether the destination had that file before is unknown: kept
    else:
        _finish(migration, MigrationStatus.FAILED, "the worker running it stopped", actor, source_hv=source_hv)
