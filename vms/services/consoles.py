"""Console tickets and sessions: who may open a VM's console, and the record of each one opened.

A ticket is 256 random bits, shown once to whoever asked for it and kept only
as its SHA-256. It opens one console (one VM, one type, one user) once, within
`VAPOR_CONSOLE_TICKET_TTL` seconds. Redeeming it re-checks everything that was
checked when it was issued, because a role or a user may have changed
meanwhile; an open console is re-checked by `console_sessions_check`.

Who may do what:
- type in a console (graphical or serial): the operator role (or admin) in the
  VM's project and the permission `vms.use_console` (which those roles grant);
- watch a serial console without typing: any member of the VM's project with
  `vms.watch_console` (no role grants it: an admin gives it to a user or group)
  or `vms.use_console`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.access import Actor, audit, role_of
from projects.choices import RANK, Role, Via
from projects.models import Membership
from vaporsite.errors import Conflict, Forbidden, InvalidInput, NotFound
from vms.choices import ConsoleType, EventStatus
from vms.hypervisor import Hypervisor
from vms.models import ConsoleTicket, VirtualMachine, VmEvent

# Domain states in which a console has something to show (a paused guest still has a screen).
CONSOLE_STATES = frozenset({"running", "blocked", "paused"})


def ticket_hash(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedTicket:
    ticket: str
    vm_id: int
    type: str
    read_only: bool
    expires_at: datetime


@dataclass(frozen=True)
class ConsoleGrant:
    """What a redeemed ticket allows: one console session."""

    ticket_id: int
    user_id: int
    username: str
    vm_id: int
    vm_name: str
    project_id: int
    type: str
    read_only: bool
    source_address: str | None
    host_uri: str = ""  # the libvirt URI of the VM's host ("": the default host's)


class TicketRefused(Exception):
    """A console connection refused before anything reached the guest; the message says why."""


def console_type(value: Any) -> str:
    if value not in ConsoleType.values:
        raise InvalidInput(f"type must be one of {', '.join(ConsoleType.values)}, not {value!r}", field="type")
    return str(value)


def _rights(user: Any, role: str | None) -> tuple[bool, bool]:
    """(may type, may watch) in a console of a VM in a project where `user` holds `role` (None: not a member)."""
    if role is None:
        return False, False
    can_type = user.has_perm("vms.use_console") and RANK[Role(role)] >= RANK[Role.OPERATOR]
    return can_type, can_type or user.has_perm("vms.watch_console") or user.has_perm("vms.use_console")


def console_read_only(*, actor: Actor, vm: VirtualMachine, type: str, read_only: bool = False) -> bool:
    """Whether `actor` gets the console of `vm` read-only (True) or read-write (False); refuses if neither.

    404 for a user outside the VM's project, 403 for a member without the permission.
    """
    user = actor.user
    role = role_of(actor, vm.project)
    if role is None or user is None:
        raise NotFound(f"VM {vm.pk} does not exist", code="not_found")
    can_type, can_watch = _rights(user, role)
    if not can_watch:
        raise Forbidden(
            f"{actor.name} may not open the consoles of VM {vm.name}: that needs the permission vms.use_console "
            f"with the operator role in project {vm.project.name}, or vms.watch_console to watch a serial console",
            code="forbidden",
        )
    if can_type and not read_only:
        return False
    if type == ConsoleType.VNC:
        raise Forbidden(
            f"{actor.name} may only watch consoles of VM {vm.name}, and a graphical console cannot be watched without "
            "typing: it needs vms.use_console with the operator role; the serial console can be watched",
            code="forbidden",
        )
    return True


def console_ticket_issue(*, vm: VirtualMachine, type: str, hv: Hypervisor, actor: Actor, read_only: bool = False) -> IssuedTicket:
    """A ticket for the console `type` of the running `vm`.

    400 unknown type, 404 not visible, 403 not allowed, 409 not running
    (`state` says what it is) or no VNC console (`graphics` says what it has).
    """
    type = console_type(type)
    read_only = console_read_only(actor=actor, vm=vm, type=type, read_only=read_only)
    try:
        state = hv.domain_state(vm.name)
    except NotFound:
        state = "missing"
    if state not in CONSOLE_STATES:
        raise Conflict(
            f"VM {vm.name} is not running (its domain is {state}); start it to open its console", code="not_running", state=state
        )
    if type == ConsoleType.VNC:
        graphics = hv.console(vm.name).type
        if graphics != "vnc":
            has = f"a {graphics.upper()} display" if graphics else "no graphical display"
            raise Conflict(
                f"VM {vm.name} has {has}, not VNC: the browser shows VNC consoles only; its serial console is available",
                code="no_vnc",
                graphics=graphics or "none",
            )
    ticket = secrets.token_urlsafe(32)
    console_tickets_purge()
    expires_at = timezone.now() + timedelta(seconds=settings.VAPOR.console_ticket_ttl)
    with transaction.atomic():
        ConsoleTicket.objects.create(
            token_hash=ticket_hash(ticket),
            user=actor.user,
            vm=vm,
            type=type,
            read_only=read_only,
            source_address=actor.source_address,
            expires_at=expires_at,
        )
        audit(
            actor,
            "vm.console",
            target=f"VM {vm.name}",
            project=vm.project,
            vm_id=vm.pk,
            detail=f"{type} ticket" + (", read-only" if read_only else ""),
        )
    return IssuedTicket(ticket=ticket, vm_id=vm.pk, type=type, read_only=read_only, expires_at=expires_at)


def console_ticket_redeem(*, ticket: str, vm_id: int, type: str, session_user_id: int | None, address: str | None) -> ConsoleGrant:
    """Spend `ticket` on the console `type` of VM `vm_id`: the grant, or TicketRefused saying why.

    The ticket is spent by the first attempt whatever its outcome, so one
    that was tried against another VM, type or user cannot be tried again.
    """
    if not ticket or len(ticket) > 256:
        raise TicketRefused("no ticket: ask POST /api/v1/virtualmachines/{id}/console for one")
    digest = ticket_hash(ticket)
    now = timezone.now()
    with transaction.atomic():
        spent = ConsoleTicket.objects.filter(token_hash=digest, used_at__isnull=True, expires_at__gt=now).update(
            used_at=now, used_from=address
        )
        row = ConsoleTicket.objects.select_related("user", "vm__project").filter(token_hash=digest).first()
    if row is None:
        raise TicketRefused("unknown ticket")
    if not spent:
        raise TicketRefused("the ticket was already used" if row.used_at is not None else "the ticket has expired")
    if row.vm_id != vm_id:
        raise TicketRefused("the ticket is for another VM")
    if row.type != type:
        raise TicketRefused(f"the ticket is for the {row.type} console, not {type}")
    if session_user_id is not None and session_user_id != row.user_id:
        raise TicketRefused("the ticket belongs to another user")
    user = row.user
    if not user.is_active:
        raise TicketRefused("the ticket's user is deactivated")
    actor = Actor(user=user, source_address=address, via=Via.API)
    try:
        read_only = console_read_only(actor=actor, vm=row.vm, type=type, read_only=row.read_only)
    except (NotFound, Forbidden) as exc:
        raise TicketRefused(f"access withdrawn since the ticket was issued: {exc.message}") from exc
    return ConsoleGrant(
        ticket_id=row.pk,
        user_id=user.pk,
        username=user.get_username(),
        vm_id=row.vm_id,
        vm_name=row.vm.name,
        project_id=int(row.vm.project_id or 0),
        type=type,
        read_only=read_only,
        source_address=address,
        host_uri=row.vm.host.libvirt_uri,
    )


def _mode(grant: ConsoleGrant) -> str:
    return "read-only" if grant.read_only else "read-write"


def _event(**fields: Any) -> None:
    """One event on a VM's log, unless the VM is gone (deleted meanwhile: its events went with it)."""
    try:
        with transaction.atomic():
            VmEvent.objects.create(**fields)
    except IntegrityError:
        if VirtualMachine.objects.filter(pk=fields["vm_id"]).exists():
            raise


def console_session_opened(*, grant: ConsoleGrant) -> None:
    _event(
        vm_id=grant.vm_id,
        step=f"console {grant.type}",
        status=EventStatus.INFO,
        message=f"{grant.username} opened the {grant.type} console ({_mode(grant)})",
        user_id=grant.user_id,
        source_address=grant.source_address,
    )


def console_session_closed(
    *, grant: ConsoleGrant, started: datetime, ended: datetime, reason: str, to_client: int, from_client: int
) -> None:
    """The session's record on the VM's event log: who, which console, from when to when, why it ended."""
    local = timezone.localtime
    _event(
        vm_id=grant.vm_id,
        step=f"console {grant.type}",
        status=EventStatus.INFO,
        message=(
            f"{grant.username}'s {grant.type} console ({_mode(grant)}) closed: open from "
            f"{local(started):%Y-%m-%d %H:%M:%S} to {local(ended):%H:%M:%S %Z} "
            f"({(ended - started).total_seconds():.0f} s, {to_client} bytes shown, {from_client} bytes typed); {reason}"
        ),
        user_id=grant.user_id,
        source_address=grant.source_address,
    )


# Close codes the websocket uses for what console_sessions_check finds (CONTRACT: 4001, 4004).
ACCESS_WITHDRAWN = 4001
VM_DELETED = 4004


def console_sessions_check(grants: list[ConsoleGrant]) -> dict[int, tuple[int, str]]:
    """The open sessions that must end now, by ticket id: (close code, reason).

    A few queries whatever the number of sessions (the VMs that still exist,
    the users still active, their roles in the VMs' projects), plus the
    permission lookups of each distinct user.
    """
    if not grants:
        return {}
    vms = set(VirtualMachine.objects.filter(pk__in={g.vm_id for g in grants}).values_list("pk", flat=True))
    users = {user.pk: user for user in get_user_model().objects.filter(pk__in={g.user_id for g in grants}, is_active=True)}
    roles = {
        (user_id, project_id): role
        for user_id, project_id, role in Membership.objects.filter(
            user_id__in=users, project_id__in={g.project_id for g in grants}
        ).values_list("user_id", "project_id", "role")
    }
    verdicts: dict[int, tuple[int, str]] = {}
    for grant in grants:
        user = users.get(grant.user_id)
        if grant.vm_id not in vms:
            verdicts[grant.ticket_id] = (VM_DELETED, "the VM was deleted")
        elif user is None:
            verdicts[grant.ticket_id] = (ACCESS_WITHDRAWN, "the user was deactivated")
        elif not user.is_superuser:
            can_type, can_watch = _rights(user, roles.get((user.pk, grant.project_id)))
            if not (can_watch if grant.read_only else can_type):
                verdicts[grant.ticket_id] = (ACCESS_WITHDRAWN, "the user may no longer open this console")
    return verdicts


def console_tickets_purge(*, older_than: timedelta = timedelta(days=1)) -> int:
    """Delete tickets that expired more than `older_than` ago (they are worth nothing)."""
    deleted, _ = ConsoleTicket.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
