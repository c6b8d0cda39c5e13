"""Which host a new VM goes to (issue 15, point 3).

`place` answers with one host and, for every other host, why it was not
chosen. With `host` named in the request, that host (refused with a 409 and
the reason when it is disabled, in maintenance, down or full). Without it,
the candidates are filtered:

- enabled, not in maintenance, not recorded down by the health schedule
  (a host never checked yet is asked);
- answering now, through its kept connection; every candidate is asked in
  parallel (`vms.parallel`) and a host that does not answer within
  VAPOR_HOST_CONNECT_TIMEOUT plus a second is refused with that as the
  reason, never waited for longer;
- the request's host checks (`validation.host_fit`): architecture, the size
  of the VM against the host's, the storage pool (active), the NAT networks
  and bridges, the existing disks' and clone sources' files present;
- its budget: memory x memory_overcommit and CPUs x cpu_overcommit (the
  Host row's ratios), minus what its live VMs in Vapor's database take.

and weighed: the most memory left after placing the VM, ties by name.

Two creates placed at once must not both take the room a host has for one
of them: in the transaction that stores the VM (`vm_create`), `place` locks
the Host rows it weighs when there are several (every host for automatic
placement, in name order; the named one otherwise) until that VM's row is committed, so a concurrent
create waits and then counts it. Creates that need placement therefore
queue behind each other for the time of their checks (milliseconds on kept
connections; at most the answer timeout when a host is silent).

A one-host install (a single Host row) places on that host without the
budget of live VMs and without asking it twice: the validation that follows
gives its errors exactly as before hosts existed. The chosen host's full
checks (path guard, image chains, name free on the host) run in
`vm_validate`, against that host only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import QuerySet

from projects.models import Project
from vaporsite.errors import Conflict, NotFound, VaporError
from vms import hypervisor
from vms.host_models import DEFAULT_HOST, Host, HostHealth
from vms.hypervisor import Hypervisor
from vms.hypervisor.uris import files_are_local
from vms.parallel import answer_timeout, ask_each
from vms.services.requests import VmRequest

MIB = 2**20


@dataclass(frozen=True)
class HostUse:
    """What a host's live VMs take, from Vapor's database: MB of memory, vCPUs, how many VMs."""

    memory_mb: int = 0
    vcpus: int = 0
    vms: int = 0


@dataclass(frozen=True)
class Placement:
    """The chosen host, its connection, and why each other host was refused (host name -> reasons)."""

    host: Host
    hv: Hypervisor
    refused: dict[str, list[str]] = field(default_factory=dict)
    requested: bool = False  # the request named the host
    free_memory_mb: int | None = None  # the chosen host's memory budget left once the VM is placed (None: not weighed)

    @property
    def reasons(self) -> dict[str, list[str]]:
        return self.refused

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host.name, "requested": self.requested, "refused": self.refused}


def host_usage(hosts: list[Host] | None = None) -> dict[int, HostUse]:
    """Memory, vCPUs and VMs each host's live VMs (provisioning, running, stopped, unknown) take, by host id:
    the hosts service's count (`hosts_usage`), in the units placement weighs."""
    from vms.services.hosts import hosts_usage

    return {pk: HostUse(use.memory_bytes // MIB, use.vcpus, use.vms) for pk, use in hosts_usage(hosts).items()}


def unavailable_reason(host: Host) -> str:
    """Why placement may not use `host` whatever the request ("" when it may): disabled, maintenance, down."""
    if not host.enabled:
        return "disabled"
    if host.maintenance:
        return "in maintenance"
    if host.health == HostHealth.DOWN:
        when = f" since {host.last_seen_at:%Y-%m-%d %H:%M:%S} UTC" if host.last_seen_at else ""
        return f"down{when}: {host.last_error or 'no answer at the last check'}"
    return ""


def budget_reasons(host: Host, request: VmRequest, hv: Hypervisor, use: HostUse) -> tuple[list[str], int]:
    """Whether the VM fits the host's budget beside its live VMs: the reasons it does not, and the memory (MB) left after it."""
    size = hv.host_resources()
    host_mb = size.memory_bytes // MIB
    memory_budget = int(host_mb * host.memory_overcommit)
    cpu_budget = int(size.cpus * host.cpu_overcommit)
    left = memory_budget - use.memory_mb - request.memory
    reasons = []
    if left < 0:
        reasons.append(
            f"memory: {use.memory_mb} MB used by {use.vms} VM(s) + {request.memory} MB asked > "
            f"{memory_budget} MB budget ({host_mb} MB x {host.memory_overcommit:g})"
        )
    if use.vcpus + request.vcpus > cpu_budget:
        reasons.append(
            f"vCPUs: {use.vcpus} used by {use.vms} VM(s) + {request.vcpus} asked > "
            f"{cpu_budget} budget ({size.cpus} CPUs x {host.cpu_overcommit:g})"
        )
    return reasons, left


@dataclass
class _Judged:
    host: Host
    hv: Hypervisor | None = None
    reasons: list[str] = field(default_factory=list)
    left: int = 0


def _judge(host: Host, request: VmRequest, use: HostUse, *, budget: bool) -> _Judged:
    """Ask one host (in a worker thread: no database here) whether the request fits it."""
    from vms.services.validation import host_fit

    judged = _Judged(host)
    try:
        hv = hypervisor.get_hypervisor(host.libvirt_uri)
        host_fit(request, hv, local=files_are_local(host.libvirt_uri))
        if budget:
            judged.reasons, judged.left = budget_reasons(host, request, hv, use)
        judged.hv = hv
    except VaporError as exc:
        judged.reasons = [_words(exc)]
    except Exception as exc:  # one broken host is a reason, never the request's failure
        judged.reasons = [f"could not be asked: {exc}"]
    return judged


def _words(exc: VaporError) -> str:
    if exc.status == 503:
        return f"unreachable: {exc.message}"
    return f"{exc.field}: {exc.message}" if exc.field else exc.message


def _ask_all(hosts: list[Host], request: VmRequest, usage: dict[int, HostUse], *, budget: bool) -> list[_Judged]:
    """Every host judged in parallel (vms.parallel); one that has not answered in time is refused, and not waited for."""
    timeout = answer_timeout()
    answers = ask_each(lambda h: _judge(h, request, usage.get(h.pk, HostUse()), budget=budget), hosts, timeout=timeout)
    return [
        answer if answer is not None else _Judged(host, reasons=[f"unreachable: no answer within {timeout:g} s"])
        for host, answer in zip(hosts, answers, strict=True)
    ]


def place(*, request: VmRequest, project: Project | None = None, hv: Hypervisor | None = None) -> Placement:
    """The host for `request` (see the module's words). `hv`: the caller's hypervisor for the named or
    default host (tests, commands): no placement then. Raises NotFound (field `host`) for an unknown
    host, Conflict `host_unavailable` / `host_full` for a named host that may not take it, and Conflict
    `no_host` (with `refused`: host -> reasons) when no host fits."""
    # Budgets are weighed only with several hosts: only then are the rows locked (a one-host install queues nothing).
    several = hv is None and Host.objects.count() > 1
    rows = _locked_hosts() if several else Host.objects.all()
    if request.host:
        host = rows.filter(name=request.host).first()
        if host is None:
            raise NotFound(f"host {request.host!r} does not exist", field="host", code="host_not_found")
        return _place_on(host, request, hv, requested=True, alone=not Host.objects.exclude(pk=host.pk).exists())
    hosts = list(rows.order_by("name"))
    if hv is not None or len(hosts) <= 1:
        host = hosts[0] if hosts and hv is None else Host.objects.get_or_create(name=DEFAULT_HOST)[0]
        return _place_on(host, request, hv, requested=False, alone=len(hosts) <= 1)
    refused: dict[str, list[str]] = {}
    candidates = []
    for host in hosts:
        reason = unavailable_reason(host)
        if reason:
            refused[host.name] = [reason]
        else:
            candidates.append(host)
    judged = _ask_all(candidates, request, host_usage(candidates), budget=True) if candidates else []
    fitting = []
    for one in judged:
        if one.reasons or one.hv is None:
            refused[one.host.name] = one.reasons or ["could not be asked"]
        else:
            fitting.append(one)
    if not fitting:
        raise Conflict(
            "no host can take this VM: " + "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in sorted(refused.items())),
            code="no_host",
            refused=dict(sorted(refused.items())),
        )
    best = min(fitting, key=lambda one: (-one.left, one.host.name))
    assert best.hv is not None
    return Placement(host=best.host, hv=best.hv, refused=dict(sorted(refused.items())), free_memory_mb=best.left)


def _locked_hosts() -> QuerySet[Host]:
    """Host rows locked until the caller's transaction ends (see the module's words); plain rows outside one."""
    if transaction.get_connection().in_atomic_block:
        return Host.objects.select_for_update()
    return Host.objects.all()


def _place_on(host: Host, request: VmRequest, hv: Hypervisor | None, *, requested: bool, alone: bool = False) -> Placement:
    """One host, named or the only one: refused (409, field `host` when named) if it may not take VMs now or
    its budget is full; its other checks are `vm_validate`'s, with their own fields and codes."""
    reason = unavailable_reason(host)
    if reason:
        raise Conflict(
            f"host {host.name} does not take new VMs: {reason}",
            field="host" if requested else None,
            code="host_unavailable",
            refused={host.name: [reason]},
        )
    hv = hv or hypervisor.get_hypervisor(host.libvirt_uri)
    left = None
    if not alone:
        reasons, left = budget_reasons(host, request, hv, host_usage([host]).get(host.pk, HostUse()))
        if reasons:
            raise Conflict(
                f"host {host.name} is full: {'; '.join(reasons)}",
                field="host" if requested else None,
                code="host_full",
                refused={host.name: reasons},
            )
    return Placement(host=host, hv=hv, requested=requested, free_memory_mb=left)


__all__ = ["HostUse", "Placement", "budget_reasons", "host_usage", "place", "unavailable_reason"]
