"""Changing a VM's hardware (issue 14, item 3): memory, vCPUs, their maxima, boot order, autostart, NICs.

Every change is persistent (the domain's definition, and the VM's rows); on a
running VM the current memory and vCPUs, and NICs, change live as well
(libvirt AFFECT_LIVE | AFFECT_CONFIG). The maxima are the domain's `<memory>`
and `<vcpu>`: the guest boots with them, so they change only while it is off
(409 `vm_running`), and a live change above them is a 409 `above_maximum`.
Every rule is checked before libvirt is asked anything, so a refused change
leaves the domain's XML byte-identical; a libvirt failure part-way undoes
the steps already done (in reverse) and the database transaction.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction

from projects.access import SYSTEM, Actor, audit, check_allowed, require
from projects.choices import Role
from projects.usage import Usage
from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError
from vms import hypervisor
from vms.choices import EventStatus, NicType, VmStatus
from vms.hypervisor import Hypervisor
from vms.hypervisor.documents.hardware import read_hardware
from vms.hypervisor.specs import NicSpec
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services.quotas import quota_check
from vms.services.requests import NicRequest
from vms.services.validation import MAX_MEMORY_MB, MAX_VCPUS, MIN_MEMORY_MB
from vms.services.validation import _new_mac as new_mac  # creation's rule: QEMU's range, no Vapor NIC has it

log = logging.getLogger("vapor.vms")

BOOT_KINDS = ("hd", "cdrom", "network")
"""Boot order entries besides device targets: the first disk, CD-ROM or NIC."""
LIVE_STATES = frozenset({"running", "paused", "blocked", "pmsuspended"})
HOTPLUG_NIC_MODELS = frozenset({"virtio", "e1000e"})  # PCIe devices; an rtl8139 sits on a PCI bridge without hot-plug
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NEXT_BOOT = "takes effect at the next boot"


@dataclass(frozen=True)
class HardwareChange:
    """What a PATCH asks for; None: leave it as it is."""

    memory: int | None = None
    max_memory: int | None = None
    vcpus: int | None = None
    max_vcpus: int | None = None
    boot_order: tuple[str, ...] | None = None
    autostart: bool | None = None


@dataclass
class Applied:
    """What a change did: the fields changed in the running domain (`live`) and in its definition (`persistent`)."""

    vm: VirtualMachine
    live: list[str] = field(default_factory=list)
    persistent: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nic: NetworkInterface | None = None

    def as_dict(self) -> dict[str, list[str]]:
        return {"live": list(self.live), "persistent": list(self.persistent)}


def _check_changeable(vm: VirtualMachine, actor: Actor, what: str) -> None:
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    if vm.status == VmStatus.MISSING:
        raise Conflict(f"VM {vm.name} is missing: its domain is gone from the host, so {what} is not possible", code="vm_missing")
    if vm.status not in (VmStatus.RUNNING, VmStatus.STOPPED):
        raise Conflict(f"VM {vm.name} is {vm.status}; {what} is not possible", code="vm_busy")


def _running(vm: VirtualMachine, hv: Hypervisor) -> bool:
    return hv.domain_state(vm.name) in LIVE_STATES


def _in_range(value: int, name: str, low: int, high: int, unit: str = "") -> None:
    if value < low:
        raise InvalidInput(f"must be at least {low}{unit}", field=name)
    if value > high:
        raise InvalidInput(f"must be at most {high}{unit}", field=name)


def _check_host(vm: VirtualMachine, hv: Hypervisor, *, max_memory: int, max_vcpus: int) -> None:
    """The maxima within the host (times the overcommit ratios) and the hypervisor's vCPU limit, as at creation."""
    host = hv.host_resources()
    host_mb = host.memory_bytes // 2**20
    limit = int(host_mb * settings.VAPOR.memory_overcommit)
    if max_memory > limit:
        raise InvalidInput(f"must be at most {limit} MB (the host's {host_mb} MB times VAPOR_MEMORY_OVERCOMMIT)", field="memory")
    limit = min(int(host.cpus * settings.VAPOR.cpu_overcommit), hv.max_vcpus(vm.architecture, vm.virt_type, vm.machine))
    if max_vcpus > limit:
        raise InvalidInput(f"must be at most {limit} (host CPUs times VAPOR_CPU_OVERCOMMIT; the hypervisor's limit)", field="vcpus")


def boot_devices(vm: VirtualMachine, entries: tuple[str, ...]) -> list[str]:
    """The device keys (disk and CD-ROM targets, NIC MACs) `entries` name, in order; 400 on `boot_order` otherwise."""
    disks = list(vm.disks.order_by("order").values_list("target_dev", flat=True))
    cdroms = list(vm.cdroms.exclude(target_dev="").order_by("slot").values_list("target_dev", flat=True))
    macs = [m.lower() for m in vm.nics.order_by("order").values_list("mac", flat=True)]
    first = {"hd": disks[:1], "cdrom": cdroms[:1], "network": macs[:1]}
    if not entries:
        raise InvalidInput("must name at least one device", field="boot_order")
    devices: list[str] = []
    for index, entry in enumerate(entries):
        key = entry.lower() if ":" in entry else entry
        if key in first:
            if not first[key]:
                raise InvalidInput(f"{entry!r}: VM {vm.name} has no {'disk' if key == 'hd' else key} device", field=f"boot_order.{index}")
            key = first[key][0]
        elif key not in (*disks, *cdroms, *macs):
            known = ", ".join([*BOOT_KINDS, *disks, *cdroms, *macs])
            raise InvalidInput(f"{entry!r} is not one of {known}", field=f"boot_order.{index}")
        if key in devices:
            raise InvalidInput(f"{entry!r} names device {key} a second time", field=f"boot_order.{index}")
        devices.append(key)
    return devices


@dataclass(frozen=True)
class _Plan:
    memory: int
    max_memory: int
    vcpus: int
    max_vcpus: int


def _plan(vm: VirtualMachine, change: HardwareChange, running: bool, warnings: list[str]) -> _Plan:
    """The new values, every rule checked (400 for the shape, 409 for what the running state forbids)."""
    for name in ("memory", "max_memory"):
        value = getattr(change, name)
        if value is not None:
            _in_range(value, name, MIN_MEMORY_MB, MAX_MEMORY_MB, " MB")
    for name in ("vcpus", "max_vcpus"):
        value = getattr(change, name)
        if value is not None:
            _in_range(value, name, 1, MAX_VCPUS)
    memory = change.memory if change.memory is not None else vm.memory_mb
    vcpus = change.vcpus if change.vcpus is not None else vm.vcpus
    if running:
        for name, old in (("max_memory", vm.memory_maximum), ("max_vcpus", vm.vcpus_maximum)):
            new = getattr(change, name)
            if new is not None and new != old:
                raise Conflict(
                    f"VM {vm.name} is running: {name} ({old}) is what the guest booted with; stop the VM to change it",
                    field=name,
                    code="vm_running",
                )
        for name, new, maximum in (("memory", memory, vm.memory_maximum), ("vcpus", vcpus, vm.vcpus_maximum)):
            if new > maximum:
                raise Conflict(
                    f"VM {vm.name} is running with at most {maximum} {'MB' if name == 'memory' else 'vCPUs'}: "
                    f"{new} is above that maximum; stop the VM and raise max_{name}",
                    field=name,
                    code="above_maximum",
                    maximum=maximum,
                )
        return _Plan(memory, vm.memory_maximum, vcpus, vm.vcpus_maximum)
    max_memory, max_vcpus = change.max_memory, change.max_vcpus
    for name, new, given, old in (("memory", memory, max_memory, vm.memory_maximum), ("vcpus", vcpus, max_vcpus, vm.vcpus_maximum)):
        if given is not None and given < new:
            raise InvalidInput(f"must be at least {name} ({new})", field=f"max_{name}")
        if given is None and new > old:
            warnings.append(f"max_{name} raised to {new} to match {name}")
    return _Plan(
        memory=memory,
        max_memory=max_memory if max_memory is not None else max(vm.memory_maximum, memory),
        vcpus=vcpus,
        max_vcpus=max_vcpus if max_vcpus is not None else max(vm.vcpus_maximum, vcpus),
    )


Step = tuple[str, Callable[[], None], Callable[[], None]]  # (what, do, undo)


def _run(steps: list[Step]) -> None:
    """Do each step; on a failure undo the ones done, newest first, and raise the failure."""
    done: list[Step] = []
    try:
        for step in steps:
            step[1]()
            done.append(step)
    except Exception:
        for what, _do, undo in reversed(done):
            try:
                undo()
            except VaporError as exc:  # the first error is the one to report
                log.error("undoing %s failed: %s", what, exc.message)
        raise


def _sized_steps(
    name: str, old: tuple[int, int], new: tuple[int, int], set_current: Callable[[int], None], set_max: Callable[[int], None]
) -> list[Step]:
    """Current and maximum in an order libvirt accepts at every step: the maximum first when it grows."""
    (old_current, old_max), (current, maximum) = old, new
    steps: list[Step] = []
    if maximum != old_max:
        steps.append((f"max_{name}", lambda: set_max(maximum), lambda: set_max(old_max)))
    if current != old_current:
        steps.insert(0 if maximum < old_current else len(steps), (name, lambda: set_current(current), lambda: set_current(old_current)))
    return steps


def vm_hardware_change(*, vm: VirtualMachine, change: HardwareChange, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> Applied:
    """Apply `change` to the VM's domain and rows, persistent always, live too when it runs (see the module)."""
    _check_changeable(vm, actor, "changing its hardware")
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    running = _running(vm, hv)
    applied = Applied(vm=vm)
    plan = _plan(vm, change, running, applied.warnings)
    if plan.max_memory != vm.memory_maximum or plan.max_vcpus != vm.vcpus_maximum:
        _check_host(vm, hv, max_memory=plan.max_memory, max_vcpus=plan.max_vcpus)
    devices = boot_devices(vm, change.boot_order) if change.boot_order is not None else None
    old_boot = list(read_hardware(hv.domain_xml(vm.name, inactive=True)).boot) if devices is not None else []
    if devices == old_boot:
        devices = None
    name = vm.name
    steps: list[Step] = []
    steps += _sized_steps(
        "memory",
        (vm.memory_mb, vm.memory_maximum),
        (plan.memory, plan.max_memory),
        lambda mib: hv.set_memory(name, mib, live=running),
        lambda mib: hv.set_max_memory(name, mib),
    )
    steps += _sized_steps(
        "vcpus",
        (vm.vcpus, vm.vcpus_maximum),
        (plan.vcpus, plan.max_vcpus),
        lambda count: hv.set_vcpus(name, count, live=running),
        lambda count: hv.set_max_vcpus(name, count),
    )
    if devices is not None:
        new_boot = devices
        steps.append(("boot_order", lambda: hv.set_boot_order(name, new_boot), lambda: hv.set_boot_order(name, old_boot)))
        if running:
            applied.warnings.append(f"boot_order {NEXT_BOOT}")
    if change.autostart is not None and change.autostart != vm.autostart:
        on = change.autostart
        steps.append(("autostart", lambda: hv.set_autostart(name, on), lambda: hv.set_autostart(name, not on)))
    for what, _do, _undo in steps:
        applied.persistent.append(what)
        if running and what in ("memory", "vcpus"):
            applied.live.append(what)
    if not steps:
        applied.warnings.append("nothing to change: the VM already has these values")
        return applied
    summary = _summary(vm, plan, devices, change.autostart, running)
    try:
        _apply(vm, plan, devices, change, steps, summary, actor)
    except VaporError as exc:
        VmEvent.objects.create(
            vm=vm, step="change hardware", status=EventStatus.FAILED, message=f"{summary}: {exc.message}", user=actor.user,
            source_address=actor.source_address,
        )  # fmt: skip
        raise
    vm.refresh_from_db()
    return applied


def _apply(
    vm: VirtualMachine, plan: _Plan, devices: list[str] | None, change: HardwareChange, steps: list[Step], summary: str, actor: Actor
) -> None:
    """Rows first (quota checked under the project's lock), then libvirt's steps; a failure undoes both."""
    with transaction.atomic():
        locked = VirtualMachine.objects.select_for_update().get(pk=vm.pk)
        more = Usage(vms=0, vcpus=max(plan.vcpus - locked.vcpus, 0), memory_mb=max(plan.memory - locked.memory_mb, 0), disk_gb=0)
        if more.vcpus or more.memory_mb:
            quota_check(project=vm.project, asked=more)
        VirtualMachine.objects.filter(pk=vm.pk).update(
            memory_mb=plan.memory,
            vcpus=plan.vcpus,
            max_memory_mb=plan.max_memory,
            max_vcpus=plan.max_vcpus,
            autostart=change.autostart if change.autostart is not None else locked.autostart,
        )
        if devices is not None:
            _store_boot_order(vm, devices)
        _run(steps)
        VmEvent.objects.create(
            vm=vm, step="change hardware", status=EventStatus.DONE, message=summary, user=actor.user, source_address=actor.source_address
        )
        audit(actor, "vm.change_hardware", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=summary)


def _summary(vm: VirtualMachine, plan: _Plan, devices: list[str] | None, autostart: bool | None, running: bool) -> str:
    parts = []
    for label, old, new in (
        ("memory", vm.memory_mb, plan.memory),
        ("max_memory", vm.memory_maximum, plan.max_memory),
        ("vcpus", vm.vcpus, plan.vcpus),
        ("max_vcpus", vm.vcpus_maximum, plan.max_vcpus),
    ):
        if old != new:
            parts.append(f"{label} {old} -> {new}")
    if devices is not None:
        parts.append(f"boot order {', '.join(devices)}")
    if autostart is not None and autostart != vm.autostart:
        parts.append(f"autostart {'on' if autostart else 'off'}")
    return "; ".join(parts) + (" (live and persistent)" if running else " (persistent)")


def _store_boot_order(vm: VirtualMachine, devices: list[str]) -> None:
    position = {key: index for index, key in enumerate(devices, start=1)}
    for disk in vm.disks.all():
        Disk.objects.filter(pk=disk.pk).update(boot_order=position.get(disk.target_dev))
    for cdrom in vm.cdroms.all():
        CdromAttachment.objects.filter(pk=cdrom.pk).update(boot_order=position.get(cdrom.target_dev))
    for nic in vm.nics.all():
        NetworkInterface.objects.filter(pk=nic.pk).update(boot_order=position.get(nic.mac.lower()))


# --- NICs ------------------------------------------------------------------------------


def vm_nic_add(
    *, vm: VirtualMachine, nic: NicRequest, mac: str | None = None, hv: Hypervisor | None = None, actor: Actor = SYSTEM
) -> Applied:
    """A NIC with creation's rules (the project's networks and bridges, a MAC no Vapor NIC has), live too on a running VM."""
    _check_changeable(vm, actor, "adding a NIC")
    kind = "bridge" if nic.type == NicType.BRIDGE else "network"
    check_allowed(vm.project, kind=kind, name=nic.source, field="source")
    if mac is not None:
        mac = mac.strip().lower()
        if not MAC_RE.match(mac):
            raise InvalidInput("must be six hex pairs separated by ':', e.g. 52:54:00:12:34:56", field="mac")
        if int(mac[:2], 16) & 1:
            raise InvalidInput("must be a unicast address (the first byte even)", field="mac")
        if NetworkInterface.objects.filter(mac=mac).exists():
            raise Conflict(f"MAC {mac} is already in use by a Vapor NIC", field="mac", code="mac_in_use")
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    if nic.type == NicType.NAT and not hv.network_exists(nic.source):
        raise NotFound(f"libvirt network {nic.source!r} does not exist", field="source")
    if nic.type == NicType.BRIDGE and not hv.bridge_exists(nic.source):
        raise NotFound(f"host bridge {nic.source!r} does not exist", field="source")
    running = _running(vm, hv)
    if running and nic.model not in HOTPLUG_NIC_MODELS:
        raise Conflict(
            f"VM {vm.name} is running and a {nic.model} NIC cannot be hot-plugged (virtio or e1000e can); stop the VM first",
            field="model",
            code="not_hotpluggable",
        )
    applied = Applied(vm=vm, persistent=["networks"], live=["networks"] if running else [])
    with transaction.atomic():
        VirtualMachine.objects.select_for_update().filter(pk=vm.pk).exists()
        mac = mac or new_mac(set())
        order = max(vm.nics.values_list("order", flat=True), default=-1) + 1
        row = NetworkInterface.objects.create(vm=vm, order=order, type=nic.type, source=nic.source, model=nic.model, mac=mac)
        spec = NicSpec(kind=kind, source=nic.source, model=nic.model, mac=mac)  # type: ignore[arg-type]
        hv.attach_nic(vm.name, spec, live=running)
        message = f"NIC {mac} ({nic.type} {nic.source}, {nic.model}) added" + (" live and persistent" if running else "")
        VmEvent.objects.create(
            vm=vm, step="add NIC", status=EventStatus.DONE, message=message, user=actor.user, source_address=actor.source_address
        )
        audit(actor, "vm.add_nic", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=message)
    applied.nic = row
    vm.refresh_from_db()
    return applied


def vm_nic_remove(*, vm: VirtualMachine, mac: str, hv: Hypervisor | None = None, actor: Actor = SYSTEM) -> Applied:
    """Unplug and forget the NIC with `mac`, live too on a running VM (the guest is asked to let go of it)."""
    _check_changeable(vm, actor, "removing a NIC")
    row = vm.nics.filter(mac=mac.strip().lower()).first()
    if row is None:
        raise NotFound(f"VM {vm.name} has no NIC {mac}", field="mac")
    hv = hv or hypervisor.get_hypervisor(vm.host.libvirt_uri)
    running = _running(vm, hv)
    if running and row.model not in HOTPLUG_NIC_MODELS:
        raise Conflict(
            f"VM {vm.name} is running and its {row.model} NIC cannot be unplugged; stop the VM first", field="mac", code="not_hotpluggable"
        )
    applied = Applied(vm=vm, persistent=["networks"], live=["networks"] if running else [])
    with transaction.atomic():
        VirtualMachine.objects.select_for_update().filter(pk=vm.pk).exists()
        row.delete()
        hv.detach_nic(vm.name, row.mac, live=running)
        message = f"NIC {row.mac} ({row.type} {row.source}) removed" + (" live and persistent" if running else "")
        VmEvent.objects.create(
            vm=vm, step="remove NIC", status=EventStatus.DONE, message=message, user=actor.user, source_address=actor.source_address
        )
        audit(actor, "vm.remove_nic", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk, detail=message)
    vm.refresh_from_db()
    return applied


def _event(vm: VirtualMachine, step: str, message: str, actor: Actor, status: str = EventStatus.DONE) -> None:
    VmEvent.objects.create(vm=vm, step=step, status=status, message=message, user=actor.user, source_address=actor.source_address)
