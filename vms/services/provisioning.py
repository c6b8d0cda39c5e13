"""Provisioning as a plan of undoable steps, run by the django-q2 task.

`provision_steps(vm)` lists the steps from the VM's rows; `vm_provision`
runs them, records each on the event log, and on any failure undoes the
finished ones in reverse order. Only volumes Vapor created are ever deleted;
existing disks are only read.

A queue may deliver the task twice (or again after a worker died): a step
whose "done" event is on the log is not run again, and a volume found
without one is the leftover of an interrupted attempt (its name is derived
from the VM's unique name and was checked free when the request came in), so
it is removed and made anew rather than trusted half-copied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from isos.services import iso_record_use
from vaporsite.errors import NotFound, VaporError
from vms import hypervisor, secrets
from vms.choices import DiskSource, EventStatus, VmStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.documents.domain import domain_xml
from vms.models import Disk, VirtualMachine, VmEvent
from vms.services.design import domain_spec

log = logging.getLogger("vapor.vms")


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], None]
    undo: Callable[[], None] | None = None
    leftover: Callable[[], bool] | None = None  # True if a previous attempt left something to clear first


def _volume_steps(vm: VirtualMachine, hv: Hypervisor, disk: Disk) -> Step:
    pool = vm.storage_pool

    def exists() -> bool:
        try:
            hv.volume(pool, disk.volume_name)
        except NotFound:
            return False
        return True

    def delete() -> None:
        hv.delete_volume(pool, disk.volume_name)

    if disk.source == DiskSource.NEW:

        def run() -> None:
            hv.create_volume(pool, disk.volume_name, (disk.size_gb or 0) * 1024**3, disk.format)

        return Step(f"create volume {disk.volume_name}", run, delete, exists)

    def clone() -> None:
        grow_to = disk.size_gb * 1024**3 if disk.size_gb else None  # a clone given a size is grown to it
        hv.clone_volume(
            pool, disk.volume_name, disk.source_path, disk.source_format, linked=disk.linked, fmt=disk.format, capacity_bytes=grow_to
        )

    kind = "linked clone" if disk.linked else "clone"
    return Step(f"{kind} {disk.source_path} to {disk.volume_name}", clone, delete, exists)


def provision_steps(vm: VirtualMachine, hv: Hypervisor, password: str | None) -> list[Step]:
    steps = [_volume_steps(vm, hv, d) for d in vm.disks.all() if d.source != DiskSource.EXISTING]

    def define() -> None:
        hv.define_domain(domain_xml(domain_spec(vm, password=password)))

    def undefine() -> None:
        hv.undefine_domain(vm.name)

    steps.append(Step("define domain", define, undefine, lambda: hv.domain_exists(vm.name)))
    if vm.autostart:
        steps.append(Step("set autostart", lambda: hv.set_autostart(vm.name, True)))
    steps.append(Step("start domain", lambda: hv.start_domain(vm.name), lambda: hv.destroy_domain(vm.name)))
    return steps


def _event(vm: VirtualMachine, step: str, status: str, message: str = "") -> None:
    VmEvent.objects.create(vm=vm, step=step, status=status, message=message)


def claim_is_live(vm: VirtualMachine) -> bool:
    """A worker took the task less than a task timeout ago: it may still be running.
    Past that, django-q2 has killed it, so the claim no longer protects anything."""
    return vm.claimed_at is not None and vm.claimed_at >= timezone.now() - timedelta(seconds=settings.VAPOR.q_timeout)


def _claim(vm_id: int) -> bool:
    """Take the task unless another delivery is running it (or it is finished)."""
    stale = timezone.now() - timedelta(seconds=settings.VAPOR.q_timeout)
    return bool(
        VirtualMachine.objects.filter(pk=vm_id, status=VmStatus.PROVISIONING)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale))
        .update(claimed_at=timezone.now(), attempts=F("attempts") + 1)
    )


def max_attempts() -> int:
    """How many deliveries of a task may start: django-q2's max_attempts.

    django-q2 counts a delivery only when it finishes, so a worker killed in
    the middle (OOM, SIGKILL) would get the task again for ever; Vapor counts
    the deliveries that started itself and gives up after this many.
    """
    return int(settings.TASK_MAX_ATTEMPTS)


def vm_provision(*, vm_id: int, hv: Hypervisor | None = None) -> None:
    if not _claim(vm_id):
        return
    vm = VirtualMachine.objects.prefetch_related("disks", "nics", "cdroms__iso").get(pk=vm_id)
    if vm.attempts > max_attempts():
        message = f"provisioning started {vm.attempts - 1} times and never finished (the worker stopped each time); giving up"
        _event(vm, "provision", EventStatus.FAILED, message)
        _rollback(vm, provision_steps(vm, hv or hypervisor.get_hypervisor(), None), only_leftovers=True)
        VirtualMachine.objects.filter(pk=vm.pk).update(status=VmStatus.FAILED, error=message, graphics_password_encrypted="")
        log.warning("provisioning %s: %s", vm.name, message)
        return
    hv = hv or hypervisor.get_hypervisor()
    password = secrets.decrypt(vm.graphics_password_encrypted)
    finished = set(vm.events.filter(status__in=[EventStatus.DONE, EventStatus.SKIPPED]).values_list("step", flat=True))
    done: list[Step] = []
    for step in provision_steps(vm, hv, password):
        try:
            if step.name in finished:
                _event(vm, step.name, EventStatus.SKIPPED, "done by an earlier delivery of the task")
            else:
                if step.leftover is not None and step.leftover() and step.undo is not None:
                    step.undo()
                    _event(vm, step.name, EventStatus.INFO, "removed what an interrupted attempt left behind")
                step.run()
                _event(vm, step.name, EventStatus.DONE)
            done.append(step)
        except Exception as exc:
            message = exc.message if isinstance(exc, VaporError) else f"{type(exc).__name__}: {exc}"
            _event(vm, step.name, EventStatus.FAILED, message)
            _rollback(vm, done)
            VirtualMachine.objects.filter(pk=vm.pk).update(
                status=VmStatus.FAILED, error=f"{step.name} failed: {message}", graphics_password_encrypted=""
            )
            log.warning("provisioning %s failed at %r: %s", vm.name, step.name, message)
            return
        if step.name == "define domain" and vm.graphics_password_encrypted:
            # libvirt holds the password now; Vapor forgets it (no write when there was none).
            VirtualMachine.objects.filter(pk=vm.pk).update(graphics_password_encrypted="")
    with transaction.atomic():  # one commit, not one per row: the VM is running once this is stored
        for cdrom in vm.cdroms.all():
            iso_record_use(iso=cdrom.iso)
        _event(vm, "record ISO use", EventStatus.DONE, ", ".join(c.iso_id for c in vm.cdroms.all()))
        VirtualMachine.objects.filter(pk=vm.pk).update(status=VmStatus.RUNNING, error="", state="running", state_checked_at=timezone.now())
    log.info("provisioned %s", vm.name)


def _rollback(vm: VirtualMachine, done: list[Step], *, only_leftovers: bool = False) -> None:
    """Undo `done` in reverse; `only_leftovers`: undo the steps whose result is found on the host
    (what deliveries that never finished left behind)."""
    for step in reversed(done):
        if step.undo is None:
            continue
        if only_leftovers and (step.leftover is None or not step.leftover()):
            continue
        try:
            step.undo()
            _event(vm, step.name, EventStatus.UNDONE)
        except Exception as exc:
            message = exc.message if isinstance(exc, VaporError) else str(exc)
            _event(vm, step.name, EventStatus.UNDO_FAILED, message)
