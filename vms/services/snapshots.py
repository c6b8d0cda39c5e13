"""VM snapshots: take, list, revert, delete (issue 14 item 4).

What libvirt 9.0 / QEMU 7.2 allow, and so what Vapor offers (`kind` "internal":
inside the VM's qcow2 disks, no extra files):

- a shut-off VM, BIOS or UEFI: a disk-only snapshot (`memory` false);
- a running BIOS VM: a snapshot with its memory (`memory` true); reverting resumes
  the guest where it was. A disk-only snapshot of a running VM needs external
  overlays, which libvirt 9.0 cannot revert: refused (409 `vm_running`);
- a running UEFI VM: refused (409 `vm_running`): libvirt refuses internal snapshots
  with pflash firmware while QEMU runs. Shut it down first.

libvirt snapshots no pflash NVRAM, so a UEFI VM's snapshot owns a copy of its UEFI
variables (a raw volume in the VM's pool) that a revert writes back. Every writable
disk must be qcow2 (409 `disk_not_qcow2`). Deleting the VM deletes its snapshots.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from projects.access import SYSTEM, Actor, audit, require
from projects.choices import Role
from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError
from vms import hypervisor
from vms.choices import DiskFormat, EventStatus, VmStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.specs import SnapshotDiskSpec, SnapshotSpec
from vms.models import VirtualMachine, VmEvent, VmSnapshot
from vms.services.validation import NAME_RE

log = logging.getLogger("vapor.vms")

DESCRIPTION_MAX = 1000
_ACTIVE = frozenset({"running", "paused", "blocked"})


@dataclass(frozen=True)
class Reverted:
    snapshot: VmSnapshot
    state: str  # the domain's state after the revert
    vm: VirtualMachine


def vm_snapshot_list(*, vm: VirtualMachine) -> list[VmSnapshot]:
    return list(VmSnapshot.objects.filter(vm=vm).order_by("created_at", "id"))


def vm_snapshot_get(*, vm: VirtualMachine, name: str) -> VmSnapshot:
    try:
        return VmSnapshot.objects.get(vm=vm, name=name)
    except VmSnapshot.DoesNotExist:
        raise NotFound(f"VM {vm.name} has no snapshot {name!r}", field="snapshot", code="snapshot_not_found") from None


def vm_snapshot_names(*, vm: VirtualMachine, target_dev: str | None = None) -> list[str]:
    """The names of the VM's snapshots (those holding disk `target_dev` when given): a disk they hold may be
    neither detached nor shrunk (409 `has_snapshots`)."""
    return [s.name for s in vm_snapshot_list(vm=vm) if target_dev is None or target_dev in s.disks]


def _hardware(vm: VirtualMachine) -> dict[str, object]:
    """What libvirt's definition says of the VM as Vapor stores it; a snapshot keeps the definition of its moment."""
    return {
        "memory_mb": vm.memory_mb,
        "vcpus": vm.vcpus,
        "max_memory_mb": vm.max_memory_mb,
        "max_vcpus": vm.max_vcpus,
        "disks": [[d.target_dev, d.path or d.volume_name, d.size_gb, d.bus, d.boot_order] for d in vm.disks.order_by("order")],
        "cdroms": [[c.slot, c.iso_id, c.target_dev, c.boot_order] for c in vm.cdroms.order_by("slot")],
        "nics": [[n.order, n.type, n.source, n.model, n.mac, n.boot_order] for n in vm.nics.order_by("order")],
    }


def _changed_since(snapshot: VmSnapshot, vm: VirtualMachine) -> list[str]:
    then, now = snapshot.hardware, _hardware(vm)
    return [key for key in now if key in then and then[key] != now[key]]


def _check_vm(vm: VirtualMachine, what: str) -> None:
    if vm.status not in (VmStatus.RUNNING, VmStatus.STOPPED):
        raise Conflict(f"VM {vm.name} is {vm.status}; {what} is not possible", code="vm_busy")


def _event(vm: VirtualMachine, step: str, message: str, actor: Actor) -> None:
    VmEvent.objects.create(vm=vm, step=step, status=EventStatus.DONE, message=message, user=actor.user, source_address=actor.source_address)


def _nvram_volume(vm: VirtualMachine, name: str) -> str:
    return f"{vm.name}.snapshot-{name}.VARS.fd"


def vm_snapshot_create(
    *, vm: VirtualMachine, name: str, description: str = "", memory: bool = False, hv: Hypervisor | None = None, actor: Actor = SYSTEM
) -> VmSnapshot:
    """Take snapshot `name` of the VM (with the running guest's memory when `memory`); see the module's rules."""
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    if not NAME_RE.match(name or ""):
        raise InvalidInput("a snapshot name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit", field="name")
    if len(description) > DESCRIPTION_MAX:
        raise InvalidInput(f"the description is longer than {DESCRIPTION_MAX} characters", field="description")
    _check_vm(vm, "a snapshot")
    if VmSnapshot.objects.filter(vm=vm, name=name).exists():
        raise Conflict(f"VM {vm.name} already has a snapshot named {name!r}", field="name", code="snapshot_exists")
    disks = list(vm.disks.all())
    if raw := [d.target_dev for d in disks if not d.readonly and d.format != DiskFormat.QCOW2]:
        raise Conflict(
            f"disk(s) {', '.join(raw)} of VM {vm.name} are not qcow2: only qcow2 disks hold snapshots", field="name", code="disk_not_qcow2"
        )
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    state = hv.domain_state(vm.name)
    if state in _ACTIVE:
        if vm.uefi:
            raise Conflict(
                f"VM {vm.name} is running: libvirt snapshots a UEFI VM only while it is shut off; shut it down first", code="vm_running"
            )
        if not memory:
            raise Conflict(
                f"VM {vm.name} is running: a running VM's snapshot holds its memory (memory=true), or shut it down first",
                field="memory",
                code="vm_running",
            )
    elif state != "shutoff":
        raise Conflict(f"VM {vm.name} is {state}; a snapshot is not possible", code="vm_busy")
    elif memory:
        raise Conflict(f"VM {vm.name} is shut off: it has no memory to save (memory=false)", field="memory", code="vm_not_running")
    held = [d.target_dev for d in disks if not d.readonly]
    spec = SnapshotSpec(
        name=name,
        description=description,
        memory="internal" if memory else "no",
        disks=tuple(SnapshotDiskSpec(d.target_dev, "no" if d.readonly else "internal") for d in disks),
    )
    nvram = ""
    try:
        with transaction.atomic():
            VirtualMachine.objects.select_for_update().filter(pk=vm.pk).exists()
            snapshot = VmSnapshot.objects.create(
                vm=vm,
                name=name,
                description=description,
                memory=memory,
                vm_state=state,
                disks=held,
                hardware=_hardware(vm),
                created_by=actor.user,
            )
            if vm.uefi and hv.save_nvram(vm.name, vm.storage_pool, _nvram_volume(vm, name)) is not None:
                nvram = _nvram_volume(vm, name)
                VmSnapshot.objects.filter(pk=snapshot.pk).update(nvram_volume=nvram)
            hv.create_snapshot(vm.name, spec)
            _event(vm, f"snapshot {name}", "with memory" if memory else "disks only", actor)
            audit(actor, "vm.snapshot.create", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=name)
    except IntegrityError:
        _drop_volume(hv, vm, nvram)
        raise Conflict(f"VM {vm.name} already has a snapshot named {name!r}", field="name", code="snapshot_exists") from None
    except BaseException:
        _drop_volume(hv, vm, nvram)
        raise
    log.info("snapshot %s of VM %s taken", name, vm.name)
    snapshot.refresh_from_db()
    return snapshot


def _drop_volume(hv: Hypervisor, vm: VirtualMachine, volume: str) -> None:
    if volume:
        try:
            hv.delete_volume(vm.storage_pool, volume)
        except NotFound:
            pass
        except VaporError as exc:  # the first error matters; this one is only logged
            log.warning("could not delete %s of VM %s: %s", volume, vm.name, exc)


def vm_snapshot_revert(*, vm: VirtualMachine, name: str, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> Reverted:
    """Go back to snapshot `name`: the disks (and memory, and a UEFI VM's variables) as they were then.

    A snapshot with memory leaves the guest running from that moment; a disk-only one leaves the VM shut off
    (libvirt stops a running VM first). Later snapshots stay. libvirt also brings back the domain's definition of
    that moment, so a VM whose hardware changed since (memory, vCPUs, disks, CD-ROMs, NICs) is refused (409).
    """
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    _check_vm(vm, "a revert")
    snapshot = vm_snapshot_get(vm=vm, name=name)
    if changed := _changed_since(snapshot, vm):
        raise Conflict(
            f"VM {vm.name}'s {', '.join(changed)} changed since snapshot {name} was taken: a revert would bring back libvirt's "
            "definition of that moment; undo the change, or delete the snapshot",
            field="snapshot",
            code="hardware_changed",
        )
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    with transaction.atomic():
        VirtualMachine.objects.select_for_update().filter(pk=vm.pk).exists()
        state = hv.revert_snapshot(vm.name, name)
        if vm.uefi:
            hv.restore_nvram(vm.name, vm.storage_pool, snapshot.nvram_volume or None)
        _event(vm, f"revert to snapshot {name}", f"now {state}", actor)
        audit(actor, "vm.snapshot.revert", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=name)
    from vms.services.states import vm_record_state

    vm_record_state(vm=vm, state=state)
    vm.refresh_from_db()
    log.info("VM %s reverted to snapshot %s (%s)", vm.name, name, state)
    return Reverted(snapshot=snapshot, state=state, vm=vm)


def vm_snapshot_delete(*, vm: VirtualMachine, name: str, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> None:
    """Delete snapshot `name` from the disks and its NVRAM copy; the VM's current state is untouched."""
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    _check_vm(vm, "deleting a snapshot")
    snapshot = vm_snapshot_get(vm=vm, name=name)
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    with transaction.atomic():
        VirtualMachine.objects.select_for_update().filter(pk=vm.pk).exists()
        hv.delete_snapshot(vm.name, name)
        snapshot.delete()
        _event(vm, f"delete snapshot {name}", "", actor)
        audit(actor, "vm.snapshot.delete", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=name)
    _drop_volume(hv, vm, snapshot.nvram_volume)


def vm_snapshot_delete_plan(*, vm: VirtualMachine) -> tuple[list[tuple[str, str]], list[str]]:
    """What deleting the VM erases of its snapshots: (where, what) pairs for the plan, and the NVRAM volumes."""
    files: list[tuple[str, str]] = []
    volumes: list[str] = []
    for snapshot in vm_snapshot_list(vm=vm):
        held = ", ".join(snapshot.disks) or "no disk"
        files.append(("", f"snapshot {snapshot.name} (inside disk(s) {held})"))
        if snapshot.nvram_volume:
            files.append(("", f"the UEFI variables of snapshot {snapshot.name} (volume {snapshot.nvram_volume} of pool {vm.storage_pool})"))
            volumes.append(snapshot.nvram_volume)
    return files, volumes


def vm_snapshots_discard(*, vm: VirtualMachine, hv: Hypervisor) -> None:
    """Delete every snapshot from the VM's disks (a kept or existing disk keeps none); for `vm_delete`, before undefine.
    Their NVRAM copies are in the delete plan's volumes."""
    for name in vm_snapshot_names(vm=vm):
        try:
            hv.delete_snapshot(vm.name, name)
        except NotFound:
            return  # no domain: nothing holds them any more
