"""Keep Vapor's VM rows in step with the state of the host's domains.

`vm_refresh_states` stores each VM's domain state (one libvirt listing per
host, the hosts read in parallel, a fixed number of queries however many VMs
there are), so listing pages show the stored state and never ask libvirt once
per row; `vm_record_state` stores one VM's state read by the caller.
`vms.services.adoption.vm_sync` refreshes the same way before it looks for
domains Vapor does not know.

A host that does not answer (issue 15, point 7) costs the others nothing: its
running and stopped VMs become `unknown` (one "host down" event each, when
they turn), the host is marked down, and the other hosts' VMs are stored as
usual. Once it answers again its VMs reconcile (running, stopped or missing,
with a "host back" event).

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
from typing import NamedTuple

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from projects.access import Actor, audit, require
from projects.choices import Role
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.choices import EventStatus, VmStatus
from vms.host_models import HostHealth
from vms.hypervisor import DomainAddresses, DomainInfo, Hypervisor
from vms.migration_models import UNFINISHED_MIGRATIONS
from vms.models import VirtualMachine, VmEvent
from vms.parallel import ask_each
from vms.services.addresses import store_addresses

log = logging.getLogger("vapor.vms")

SYNCED_STATUSES = (VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.MISSING, VmStatus.UNKNOWN)
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
    unknown: list[str] = field(default_factory=list)  # VMs that turned unknown: their host did not answer
    reconciled: list[str] = field(default_factory=list)  # unknown VMs whose host answered again


def _transition_event(vm_id: int, old: str, new: str, state: str) -> VmEvent | None:
    if old == VmStatus.UNKNOWN and new != VmStatus.UNKNOWN:
        found = f"its domain is {state}" if new != VmStatus.MISSING else "its domain is no longer defined there"
        return VmEvent(vm_id=vm_id, step="host back", status=EventStatus.INFO, message=f"the host answers again; {found}")
    if new == VmStatus.MISSING and old != VmStatus.MISSING:
        return VmEvent(vm_id=vm_id, step="domain missing", status=EventStatus.INFO, message="the domain is no longer defined on the host")
    if old == VmStatus.MISSING and new != VmStatus.MISSING:
        return VmEvent(vm_id=vm_id, step="domain back", status=EventStatus.INFO, message=f"the domain is on the host again ({state})")
    return None


class Row(NamedTuple):
    """A VM whose status its host decides, with what the refresh needs of its host (read in the same query)."""

    pk: int
    name: str
    status: str
    host: int
    host_uri: str  # the host's own URI ("" for the default host: VAPOR_LIBVIRT_URI)
    host_health: str


def synced_rows(ids: list[int] | None = None, *, host: int | None = None) -> list[Row]:
    """The VMs whose status the host decides, read *before* listing the domains.

    In that order a VM seen running or stopped had its domain defined before
    the listing (provisioning defines it first), so a domain absent from the
    listing is really gone, not defined a moment after the listing.
    """
    # A VM being migrated is the migration's to settle: between libvirt's end of the move and its host's
    # change, its source would list it as gone.
    rows = VirtualMachine.objects.filter(status__in=SYNCED_STATUSES).exclude(migrations__status__in=UNFINISHED_MIGRATIONS)
    if ids is not None:
        rows = rows.filter(pk__in=ids)
    if host is not None:
        rows = rows.filter(host_id=host)
    return [Row(*row) for row in rows.values_list("pk", "name", "status", "host_id", "host__uri", "host__health")]


def refresh_rows(rows: list[Row], domains: dict[str, DomainInfo], now: datetime) -> Refreshed:
    """Store the state of `rows`: one UPDATE per (old status, new status, state)
    group, at most one read and one insert.

    Each UPDATE only takes rows still in the status that was read, so a VM
    that a delete or an action moved on in the meantime is left alone.
    """
    result = Refreshed()
    groups: dict[tuple[str, VmStatus, str], list[tuple[int, str]]] = defaultdict(list)
    for pk, name, status, *_host in rows:
        domain = domains.get(name)
        state = domain.state if domain is not None else ""
        groups[(status, status_for(domain.state if domain else None), state)].append((pk, name))
    moved: dict[int, tuple[str, str, VmStatus, str]] = {}  # pk -> name, old, new, state: the transitions to record
    for (old, new, state), members in groups.items():
        ids = [pk for pk, _name in members]
        updated = VirtualMachine.objects.filter(pk__in=ids, status=old).update(status=new, state=state, state_checked_at=now)
        result.checked += updated
        if (old == VmStatus.MISSING) != (new == VmStatus.MISSING) or old == VmStatus.UNKNOWN:
            moved.update({pk: (name, old, new, state) for pk, name in members})
        elif old == new == VmStatus.MISSING:
            result.still_missing.extend(name for _pk, name in members)
    if moved and result.checked < sum(len(members) for members in groups.values()):
        # Some rows changed hands between the read and the UPDATE: record only what this run did.
        done = set(VirtualMachine.objects.filter(pk__in=list(moved), state_checked_at=now).values_list("pk", flat=True))
        moved = {pk: change for pk, change in moved.items() if pk in done}
    events = []
    for pk, (name, old, new, state) in sorted(moved.items(), key=lambda item: item[1][0]):
        if old == VmStatus.UNKNOWN:
            result.reconciled.append(name)
        (result.marked_missing if new == VmStatus.MISSING else result.back if old == VmStatus.MISSING else []).append(name)
        event = _transition_event(pk, old, new, state)
        if event is not None:
            events.append(event)
    VmEvent.objects.bulk_create(events)
    result.still_missing.sort()
    return result


def mark_unknown(rows: list[Row], errors: dict[int, str], now: datetime) -> list[str]:
    """Rows on the hosts of `errors` (host pk -> why it did not answer) that are running or stopped become
    unknown, with one "host down" event each (only those this call turned); the names turned."""
    turning = [row for row in rows if row.host in errors and row.status in (VmStatus.RUNNING, VmStatus.STOPPED)]
    if not turning:
        return []
    by_status: dict[str, list[int]] = defaultdict(list)
    for row in turning:
        by_status[row.status].append(row.pk)
    turned: set[int] = set()
    for status, ids in by_status.items():
        changed = VirtualMachine.objects.filter(pk__in=ids, status=status).update(status=VmStatus.UNKNOWN, state="")
        if changed == len(ids):
            turned.update(ids)
        else:  # some changed hands meanwhile: only those now unknown and not turned before
            turned.update(VirtualMachine.objects.filter(pk__in=ids, status=VmStatus.UNKNOWN).values_list("pk", flat=True))
    events = [
        VmEvent(vm_id=row.pk, step="host down", status=EventStatus.INFO, message=f"host down: {errors[row.host]}")
        for row in turning
        if row.pk in turned
    ]
    VmEvent.objects.bulk_create(events)
    return sorted(row.name for row in turning if row.pk in turned)


def log_changes(refreshed: Refreshed) -> None:
    for name in refreshed.unknown:
        log.warning("VM %s: its host does not answer; its state is unknown", name)
    for name in refreshed.reconciled:
        log.info("VM %s: its host answers again", name)
    for name in refreshed.marked_missing:
        log.warning("VM %s: its domain is no longer on the host", name)
    for name in refreshed.back:
        log.info("VM %s: its domain is on the host again", name)


@dataclass
class _HostRead:
    domains: dict[str, DomainInfo] | None  # None: the host did not answer
    addresses: dict[str, DomainAddresses] | None
    error: str = ""


def _read_host(uri: str, names: list[str], hv: Hypervisor | None) -> _HostRead:
    """One host's domains and its VMs' addresses (no database: runs in a thread)."""
    try:
        hv = hv or hypervisor.get_hypervisor(uri)
        domains = {domain.name: domain for domain in hv.list_domains()}
    except VaporError as exc:
        return _HostRead(None, None, exc.message)
    return _HostRead(domains, read_addresses(hv, names))


def read_hosts(groups: dict[int, list[Row]], uris: dict[int, str], hv: Hypervisor | None = None) -> dict[int, _HostRead]:
    """Read every host of `groups` at once, one thread each (a lone host in the caller's thread); a host that
    has not answered within the check budget counts as not answering. `hv` (tests): used for every host."""
    from vms.services.hosts import check_budget

    def names(pk: int) -> list[str]:
        return [row.name for row in groups[pk]]

    if len(groups) == 1:
        (pk,) = groups
        return {pk: _read_host(uris[pk], names(pk), hv)}
    budget = check_budget()
    keys = list(groups)
    answers = ask_each(lambda pk: _read_host(uris[pk], names(pk), hv), keys, timeout=budget)
    silent = _HostRead(None, None, f"no answer within {budget:g} s")
    return {pk: got if got is not None else silent for pk, got in zip(keys, answers, strict=True)}


def vm_refresh_states(*, hv: Hypervisor | None = None, ids: list[int] | None = None) -> int:
    """Store every running/stopped/missing/unknown VM's domain state (only those of `ids` if given); the number of
    VMs checked (those of hosts that answered).

    One libvirt listing per host, the hosts read in parallel, and a fixed number of queries whatever the number
    of VMs. A host that does not answer turns its VMs unknown and is marked down; the others are stored as usual.
    """
    from vms.services.hosts import mark_health

    rows = synced_rows(ids)
    if ids is not None and not rows:
        return 0  # nothing of the caller's to read: the host is not asked
    groups: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.host].append(row)
    if not groups:
        return 0
    # A host the health check (or an earlier refresh) found down is left to the health check, which dials it
    # again every minute and reconciles its VMs once it answers (vms.services.hosts.hosts_check): a scheduled
    # refresh never waits on a dead host. Asked for given VMs (`ids`: Refresh, an action), it is asked anyway.
    skipped = {pk for pk, members in groups.items() if ids is None and members[0].host_health == HostHealth.DOWN}
    for pk in skipped:
        del groups[pk]
    uris = {pk: members[0].host_uri or settings.VAPOR.libvirt_uri for pk, members in groups.items()}
    read = read_hosts(groups, uris, hv) if groups else {}
    read.update({pk: _HostRead(None, None, "the host is down (its health check has not reached it since)") for pk in skipped})
    answered = [pk for pk, got in read.items() if got.domains is not None]
    errors = {pk: got.error for pk, got in read.items() if got.domains is None}
    domains: dict[str, DomainInfo] = {}
    addresses: dict[str, DomainAddresses] = {}
    addressed: dict[int, str] = {}
    for pk in answered:
        got = read[pk]
        assert got.domains is not None
        # A domain of the same name on another host is not this VM's: each VM is matched on its own host.
        domains.update({row.name: got.domains[row.name] for row in groups[pk] if row.name in got.domains})
        if got.addresses is not None:
            mine = {row.name for row in groups[pk]}
            addresses.update({name: found for name, found in got.addresses.items() if name in mine})
            addressed.update({row.pk: row.name for row in groups[pk]})
    with transaction.atomic():
        now = timezone.now()
        refreshed = refresh_rows([row for pk in answered for row in groups[pk]], domains, now)
        refreshed.unknown = mark_unknown(rows, errors, now)
        if addressed:
            store_addresses(addressed, addresses, now)
        # Only what this run learnt is stored here (back up, or down; no query while no host is down); the schedule's
        # check (vms.services.hosts.hosts_check) records when each host was last seen.
        health = {pk: members[0].host_health for pk, members in groups.items()}
        mark_health(up=[pk for pk in answered if health[pk] == HostHealth.DOWN], down=errors, now=now)
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
        back = [] if gone or vm.status != VmStatus.MISSING else [vm.name]
        log_changes(
            Refreshed(marked_missing=[vm.name] if gone else [], back=back, reconciled=[vm.name] if vm.status == VmStatus.UNKNOWN else [])
        )
    vm.status, vm.state, vm.state_checked_at = new, state or "", now
