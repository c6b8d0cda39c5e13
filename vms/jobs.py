"""The long-running VM work: provisioning. Run by django-q2 (`vms.tasks`).

`vm_provision` runs the steps `vms.services.provisioning.provision_steps`
lists, records each on the event log, and on any failure undoes the finished
ones in reverse order.

A queue may deliver the task twice (or again after a worker died): a step
whose "done" event is on the log is not run again, and on a later delivery a
volume found without one is the leftover of the interrupted attempt (its name
is derived from the VM's unique name and was checked free when the request
came in), so it is removed and made anew rather than trusted half-copied. The
first delivery has no earlier attempt: whatever it finds under its names
someone else made after the request was checked, so its step fails (libvirt
refuses the taken name) and the thing found is left alone.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from isos.services import iso_record_use
from vaporsite.deliveries import give_up_reason, start_delivery
from vaporsite.errors import VaporError
from vms import encryption, hypervisor
from vms.choices import EventStatus, VmStatus
from vms.hypervisor import Hypervisor
from vms.models import VirtualMachine, VmEvent
from vms.services.provisioning import Step, provision_steps

log = logging.getLogger("vapor.vms")


def _event(vm: VirtualMachine, step: str, status: str, message: str = "") -> None:
    VmEvent.objects.create(vm=vm, step=step, status=status, message=message)


def _claim(vm_id: int) -> bool:
    """Take the task unless another delivery is running it (or it is finished)."""
    stale = timezone.now() - timedelta(seconds=settings.VAPOR.q_timeout)
    return start_delivery(
        VirtualMachine.objects.filter(pk=vm_id, status=VmStatus.PROVISIONING).filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale)),
        claimed_at=timezone.now(),
    )


def vm_provision(*, vm_id: int, hv: Hypervisor | None = None) -> None:
    if not _claim(vm_id):
        return
    vm = VirtualMachine.objects.prefetch_related("disks", "nics", "cdroms__iso").get(pk=vm_id)
    message = give_up_reason(vm.attempts, "provisioning")
    if message:
        _event(vm, "provision", EventStatus.FAILED, message)
        _rollback(vm, provision_steps(vm, hv or hypervisor.get_hypervisor(vm.host.libvirt_uri), None), only_leftovers=True)
        VirtualMachine.objects.filter(pk=vm.pk).update(status=VmStatus.FAILED, error=message, graphics_password_encrypted="")
        log.warning("provisioning %s: %s", vm.name, message)
        return
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    password = encryption.decrypt(vm.graphics_password_encrypted)
    finished = set(vm.events.filter(status__in=[EventStatus.DONE, EventStatus.SKIPPED]).values_list("step", flat=True))
    earlier_attempt = vm.attempts > 1  # only then can a volume or domain found on the host be a leftover of ours
    done: list[Step] = []
    for step in provision_steps(vm, hv, password):
        try:
            if step.name in finished:
                _event(vm, step.name, EventStatus.SKIPPED, "done by an earlier delivery of the task")
            else:
                if earlier_attempt and step.leftover is not None and step.leftover() and step.undo is not None:
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


def vm_cleanup_leftovers(*, host_ids: list[int] | None = None) -> list[str]:
    """Undo what a failed provisioning could not undo because its host had gone (issue 15, point 7).

    A VM whose host died mid-way failed with "undo failed" events: the volumes or the domain it made may
    still be on that host. Once the host answers (the health check calls this for the hosts that are up),
    each such step is undone if its result is still found there; one that the host no longer has is
    recorded as gone. Only steps whose undo failed are considered (a rollback undoes only the steps this
    VM's provisioning finished), so nothing another made is removed. The names of the VMs cleared.
    """
    candidates = VirtualMachine.objects.filter(status=VmStatus.FAILED, events__status=EventStatus.UNDO_FAILED).distinct()
    if host_ids is not None:
        candidates = candidates.filter(host_id__in=host_ids)
    cleared = []
    for vm in candidates.select_related("host").prefetch_related("disks", "nics", "cdroms__iso"):
        latest = dict(vm.events.order_by("pk").values_list("step", "status"))  # each step's last event
        pending = {name for name, status in latest.items() if status == EventStatus.UNDO_FAILED}
        if not pending:
            continue
        try:
            hv = hypervisor.get_hypervisor(vm.host.libvirt_uri)
            steps = [step for step in provision_steps(vm, hv, None) if step.name in pending]
            gone = [step for step in steps if step.leftover is not None and not step.leftover()]
            _rollback(vm, steps, only_leftovers=True)
        except VaporError as exc:
            log.info("leftovers of %s not cleared yet: %s", vm.name, exc.message)
            continue
        for step in gone:
            _event(vm, step.name, EventStatus.INFO, "nothing of it is left on the host")
        now_latest = dict(vm.events.filter(step__in=pending).order_by("pk").values_list("step", "status"))  # the last wins
        if EventStatus.UNDO_FAILED not in now_latest.values():
            _event(vm, "clean up", EventStatus.DONE, "what the failed provisioning left on its host is removed, now that it answers")
            log.info("leftovers of %s cleared on host %s", vm.name, vm.host.name)
            cleared.append(vm.name)
    return cleared
