"""Provisioning as a plan of undoable steps, run by the job `vms.jobs.vm_provision`.

`provision_steps(vm)` lists the steps from the VM's rows, each with its undo
and a check for what an interrupted attempt left behind (`vms.jobs` runs
them). Only volumes Vapor created are ever deleted; existing disks are only
read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from isos.models import IsoImage
from vms import hypervisor
from vms.choices import DiskSource, EventStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.documents.domain import domain_xml
from vms.models import Disk, VirtualMachine, VmEvent
from vms.services.cloud_init import seed_files, seed_iso, seed_of
from vms.services.design import domain_spec
from vms.services.iso_copies import host_is_local, iso_on_host
from vms.services.validation import source_recheck


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], None]
    undo: Callable[[], None] | None = None
    leftover: Callable[[], bool] | None = None  # True if a previous attempt left something to clear first


def _volume_steps(vm: VirtualMachine, hv: Hypervisor, disk: Disk) -> Step:
    pool = vm.storage_pool

    def exists() -> bool:
        return hypervisor.volume_exists(hv, pool, disk.volume_name)

    def delete() -> None:
        hv.delete_volume(pool, disk.volume_name)

    if disk.source == DiskSource.NEW:

        def run() -> None:
            hv.create_volume(pool, disk.volume_name, (disk.size_gb or 0) * 1024**3, disk.format)

        return Step(f"create volume {disk.volume_name}", run, delete, exists)

    def clone() -> None:
        source_recheck(disk, hv)  # the source as the request saw it, checked again just before it is read
        grow_to = disk.size_gb * 1024**3 if disk.size_gb else None  # a clone given a size is grown to it
        hv.clone_volume(
            pool, disk.volume_name, disk.source_path, disk.source_format, linked=disk.linked, fmt=disk.format, capacity_bytes=grow_to
        )

    kind = "linked clone" if disk.linked else "clone"
    return Step(f"{kind} {disk.source_path} to {disk.volume_name}", clone, delete, exists)


def _seed_steps(vm: VirtualMachine, hv: Hypervisor) -> list[Step]:
    """The cloud-init seed ISO, built in memory and uploaded into the VM's pool (none without cloud-init)."""
    seed = seed_of(vm)
    if seed is None:
        return []
    pool, name = vm.storage_pool, seed.volume_name

    def upload() -> None:
        hv.upload_volume(pool, name, seed_iso(seed_files(seed)))

    return [
        Step(
            f"create cloud-init seed {name}", upload, lambda: hv.delete_volume(pool, name), lambda: hypervisor.volume_exists(hv, pool, name)
        )
    ]


def _iso_copy_steps(vm: VirtualMachine, hv: Hypervisor) -> list[Step]:
    """On a remote host, each library ISO the VM boots from is copied there once (none on a local host).

    No undo: the copy is the host's, shared with every VM there that needs the ISO, and kept for
    them; a copy that failed its check leaves nothing behind (`iso_on_host`). The progress goes on
    the VM's event log, one event updated in place.
    """
    if host_is_local(vm.host):
        return []
    steps: list[Step] = []
    for cdrom in vm.cdroms.all():
        iso = cdrom.iso

        def copy(iso: IsoImage = iso) -> None:
            event = VmEvent.objects.create(vm=vm, step=f"copy ISO {iso.name} to host {vm.host.name}", status=EventStatus.INFO)

            def progress(done: int, total: int) -> None:
                percent = 100 * done // total if total else 100
                VmEvent.objects.filter(pk=event.pk).update(message=f"{done} of {total} bytes sent ({percent}%)")

            path = iso_on_host(iso=iso, host=vm.host, hv=hv, progress=progress)
            VmEvent.objects.filter(pk=event.pk).update(message=f"{path}, sha256 checked on the host")

        steps.append(Step(f"copy ISO {iso.name} to host {vm.host.name}", copy))
    return steps


def iso_paths(vm: VirtualMachine, hv: Hypervisor) -> dict[str, str]:
    """ISO id -> the file the VM's host opens for it: the checked copy on a remote host (made if missing)."""
    if host_is_local(vm.host):
        return {}
    return {c.iso_id: iso_on_host(iso=c.iso, host=vm.host, hv=hv) for c in vm.cdroms.all()}


def provision_steps(vm: VirtualMachine, hv: Hypervisor, password: str | None) -> list[Step]:
    steps = _iso_copy_steps(vm, hv)  # first: the longest and likeliest to fail, with nothing to undo
    steps += [_volume_steps(vm, hv, d) for d in vm.disks.all() if d.source != DiskSource.EXISTING]
    steps += _seed_steps(vm, hv)

    def define() -> None:
        # The chains the domain states are checked again: an existing disk's
        # and a linked clone's source are opened by QEMU from here on.
        for disk in vm.disks.all():
            if disk.source == DiskSource.EXISTING or disk.linked:
                source_recheck(disk, hv)
        hv.define_domain(domain_xml(domain_spec(vm, password=password, iso_paths=iso_paths(vm, hv))))

    def undefine() -> None:
        hv.undefine_domain(vm.name)

    steps.append(Step("define domain", define, undefine, lambda: hv.domain_exists(vm.name)))
    if vm.autostart:
        steps.append(Step("set autostart", lambda: hv.set_autostart(vm.name, True)))
    steps.append(Step("start domain", lambda: hv.start_domain(vm.name), lambda: hv.destroy_domain(vm.name)))
    return steps


def claim_is_live(vm: VirtualMachine) -> bool:
    """A worker took the task less than a task timeout ago: it may still be running.
    Past that, django-q2 has killed it, so the claim no longer protects anything."""
    return vm.claimed_at is not None and vm.claimed_at >= timezone.now() - timedelta(seconds=settings.VAPOR.q_timeout)
