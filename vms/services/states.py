"""Keep Vapor's VM rows in step with the state of the host's domains.

`vm_refresh_states` stores each VM's domain state (one libvirt listing for all
VMs, a fixed number of queries however many VMs there are), so listing pages
show the stored state and never ask libvirt once per row; `vm_record_state`
stores one VM's state read by the caller. `vms.services.adoption.vm_sync`
refreshes the same way before it looks for domains Vapor does not know.

Nothing here ever deletes: no domain, no volume, no row. A VM whose domain
has vanished becomes `missing` (and running or stopped again when the domain
comes back); a VM that is provisioning, deleting or failed is never touched,
because its domain is expected to come and go.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from projects.access import Actor, audit, require
from projects.choices import Role
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.choices import EventStatus, VmStatus
from vms.hypervisor import DomainAddresses, DomainInfo, Hypervisor
from vms.models import VirtualMachine, VmEvent
from vms.services.addresses import store_addresses

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


@dataclass
class Refreshed:
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


def synced_rows(ids: list[int] | None = None) -> list[Row]:
    """The VMs whose status the host decides, read *before* listing the domains.

    In that order a VM seen running or stopped had its domain defined before
    the listing (provisioning defines it first), so a domain absent from the
    listing is really gone, not defined a moment after the listing.
    """
    rows = VirtualMachine.objects.filter(status__in=SYNCED_STATUSES)
    if ids is not None:
        rows = rows.filter(pk__in=ids)
    return list(rows.values_list("pk", "name", "status"))


def refresh_rows(rows: list[Row], domains: dict[str, DomainInfo], now: datetime) -> Refreshed:
    """Store the state of `rows`: one UPDATE per (old status, new status, state)
    group, at most one read and one insert.

    Each UPDATE only takes rows still in the status that was read, so a VM
    that a delete or an action moved on in the meantime is left alone.
    """
    result = Refreshed()
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


def log_changes(refreshed: Refreshed) -> None:
    for name in refreshed.marked_missing:
        log.warning("VM %s: its domain is no longer on the host", name)
    for name in refreshed.back:
        log.info("VM %s: its domain is on the host again", name)


def vm_refresh_states(*, hv: Hypervisor | None = None, ids: list[int] | None = None) -> int:
    """Store every running/stopped/missing VM's domain state (only those of `ids` if given); the number of VMs checked.

    One libvirt listing and a fixed number of queries, whatever the number of VMs.
    """
    rows = synced_rows(ids)
    if ids is not None and not rows:
        return 0  # nothing of the caller's to read: the host is not asked
    owned = hv is None
    hv = hv or hypervisor.get_hypervisor()
    try:
        domains = {domain.name: domain for domain in hv.list_domains()}
        read = read_addresses(hv, [name for _pk, name, _status in rows])
    finally:
        if owned:
            hv.close()
    with transaction.atomic():
        now = timezone.now()
        refreshed = refresh_rows(rows, domains, now)
        if read is not None:
            store_addresses({pk: name for pk, name, _status in rows}, read, now)
    log_changes(refreshed)
    return refreshed.checked


def read_addresses(hv: Hypervisor, names: list[str]) -> dict[str, DomainAddresses] | None:
    """The guest addresses of the domains `names` in one bulk read; None (and a warning) when the host could
    not say: the states are stored all the same and the addresses keep their last values."""
    try:
        return {d.name: d for d in hv.domain_addresses(names)}
    except VaporError as exc:
        log.warning("guest addresses not read: %s", exc.message)
        return None


def vm_refresh(*, vm: VirtualMachine, actor: Actor, hv: Hypervisor | None = None) -> VirtualMachine:
    """Read one VM's state and addresses from the host now (the VM page's Refresh button): an operator of
    its project only; audited. A VM that a task owns (provisioning, deleting, failed) keeps its status."""
    require(actor, vm.project, Role.OPERATOR, f"VM {vm.name}")
    vm_refresh_states(hv=hv, ids=[vm.pk])
    audit(actor, "vm.refresh", target=f"VM {vm.name}", project=vm.project, vm_id=vm.pk)
    vm.refresh_from_db()
    return vm


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
        log_changes(Refreshed(marked_missing=[vm.name] if gone else [], back=[] if gone else [vm.name]))
    vm.status, vm.state, vm.state_checked_at = new, state or "", now
