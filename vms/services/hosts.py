"""Hypervisor hosts (issue 15): add, change and remove them, read what they have, and how full they are.

A host is a row (`vms.host_models.Host`); what it has (capabilities, size,
pools, networks, bridges, firmware) is read from it by `hosts_check`, the
schedule's task, and kept in `facts`, with its health. Reading runs in one
thread per host, each bounded in time, and never touches the database: the
caller's thread stores what the threads read. A host that does not answer
is marked down with libvirt's words and costs the others nothing.

`host_usage` / `hosts_usage` say how much of a host's budget (its CPUs and
memory times the overcommit ratios) its live VMs take: the admin, the API
and placement all ask these.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from projects.access import Actor, audit
from vaporsite.errors import Conflict, Forbidden, InvalidInput, VaporError
from vms import hypervisor
from vms.choices import LIVE_STATUSES
from vms.host_models import DEFAULT_HOST, HOST_NAME, Host, HostHealth
from vms.models import VirtualMachine
from vms.parallel import ask_each

log = logging.getLogger("vapor.vms")

URI_SCHEMES = ("qemu", "qemu+tcp", "qemu+tls", "qemu+ssh", "qemu+unix", "qemu+libssh", "qemu+libssh2", "test")
"""The libvirt URI schemes a host may use: QEMU locally or over a remote transport; `test` for tests."""

_URI = re.compile(r"^(?P<scheme>[a-z0-9+]+)://(?P<authority>[^/?#\s]*)(?P<path>/[^?#\s]*)(?:\?[^#\s]*)?$")

EDITABLE = ("uri", "enabled", "maintenance", "cpu_overcommit", "memory_overcommit", "labels")
"""What PATCH may change (the name is the host's key: renaming is refused)."""

MIB = 2**20


def check_uri(uri: str) -> str:
    """`uri` if it is a libvirt URI Vapor may use (a scheme from URI_SCHEMES, a path such as /system); else 400 on `uri`."""
    uri = uri.strip()
    match = _URI.match(uri)
    if match is None:
        raise InvalidInput(f"{uri!r} is not a libvirt URI such as qemu+tls://kvm2.example.org/system", field="uri")
    if match["scheme"] not in URI_SCHEMES:
        raise InvalidInput(f"libvirt URI scheme {match['scheme']!r} is not one of {', '.join(URI_SCHEMES)}", field="uri")
    if match["path"] in ("", "/"):
        raise InvalidInput(f"{uri!r} names no daemon path: add /system (or /session)", field="uri")
    return uri


def _check_labels(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in labels.items()):
        raise InvalidInput("labels are an object of names to text, numbers or booleans", field="labels")
    return dict(labels)


def _check_ratio(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.1 <= float(value) <= 100:
        raise InvalidInput(f"{field} is a number from 0.1 to 100", field=field)
    return float(value)


def _require_may(actor: Actor, verb: str) -> None:
    """Hosts are the installation's, not a project's: only a superuser or someone given `vms.<verb>_host`."""
    if actor.is_system:
        return
    if not actor.user.has_perm(f"vms.{verb}_host"):
        raise Forbidden(f"you may not {verb} hosts", code="forbidden")


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "uri":
            out[key] = check_uri(str(value))
        elif key in ("cpu_overcommit", "memory_overcommit"):
            out[key] = _check_ratio(value, key)
        elif key == "labels":
            out[key] = _check_labels(value)
        elif key in ("enabled", "maintenance"):
            if not isinstance(value, bool):
                raise InvalidInput(f"{key} is true or false", field=key)
            out[key] = value
        else:
            raise InvalidInput(f"{key} cannot be set", field=key)
    return out


def _clash(*, name: str | None, uri: str | None, exclude: int | None = None) -> None:
    others = Host.objects.exclude(pk=exclude) if exclude else Host.objects.all()
    if name is not None and others.filter(name=name).exists():
        raise Conflict(f"a host named {name!r} already exists", field="name", code="name_taken")
    if uri:
        clash = others.filter(uri=uri).values_list("name", flat=True).first()
        if clash is None and uri == settings.VAPOR.libvirt_uri:
            clash = others.filter(uri="", name=DEFAULT_HOST).values_list("name", flat=True).first()
        if clash is not None:
            raise Conflict(f"host {clash} already has the URI {uri}", field="uri", code="uri_taken", host=clash)


def host_create(*, name: str, uri: str, actor: Actor, require_up: bool = False, check: bool = True, **fields: Any) -> Host:
    """Add a host and check it at once (bounded by VAPOR_HOST_CONNECT_TIMEOUT): it is stored whether it
    answers or not (down, with libvirt's words, until the schedule finds it up), unless `require_up`,
    when a host that does not answer is refused (400 on `uri`) and nothing is stored.

    `check=False` (the admin's form, which runs in a transaction): the check runs once the row is
    committed, so waiting on a slow host never holds the database's write lock."""
    _require_may(actor, "add")
    if not isinstance(name, str) or not re.fullmatch(HOST_NAME.regex, name):
        raise InvalidInput(str(HOST_NAME.message), field="name")
    values = _clean({"uri": uri, **fields})
    _clash(name=name, uri=values["uri"])
    facts: dict[str, Any] | None = None
    if require_up:
        try:
            facts = read_facts(values["uri"])
        except VaporError as exc:
            raise InvalidInput(f"host {values['uri']} does not answer: {exc.message}", field="uri", code="host_unreachable") from exc
    try:
        with transaction.atomic():
            host = Host.objects.create(name=name, **values)
            audit(actor, "host.add", target=f"host {name}", project=None, detail=values["uri"])
    except IntegrityError:
        _clash(name=name, uri=values["uri"])
        raise
    log.info("host %s added (%s)", name, values["uri"])
    if facts is not None:
        _store({host.pk: _Checked(facts=facts, error="")}, timezone.now())
    elif check:
        hosts_check(hosts=[host])
    else:
        transaction.on_commit(partial(hosts_check, hosts=[host]))
    host.refresh_from_db()
    return host


def host_update(*, host: Host, changes: dict[str, Any], actor: Actor, check: bool = True) -> Host:
    """Change the editable fields of `host`; the default host keeps its name and an empty URI (it follows
    VAPOR_LIBVIRT_URI), and a host with VMs keeps its URI (they are defined on that daemon)."""
    _require_may(actor, "change")
    if "name" in changes and changes["name"] != host.name:
        raise InvalidInput("a host cannot be renamed (its name is how VMs and requests name it); add another", field="name")
    changes = {key: value for key, value in changes.items() if key != "name"}
    values = _clean(changes)
    if "uri" in values and values["uri"] != host.uri:
        if host.is_default:
            raise InvalidInput("the default host follows VAPOR_LIBVIRT_URI; change that setting instead", field="uri")
        users = _live_vm_names(host)
        if users:
            raise Conflict(
                f"host {host.name} has {len(users)} VM(s) defined on it: {', '.join(users)}; its URI cannot change",
                field="uri",
                code="host_in_use",
                vms=users,
            )
        _clash(name=None, uri=values["uri"], exclude=host.pk)
    with transaction.atomic():
        Host.objects.filter(pk=host.pk).update(**values, updated_at=timezone.now())
        detail = ", ".join(f"{key}={value!r}" for key, value in sorted(values.items()))
        audit(actor, "host.change", target=f"host {host.name}", project=None, detail=detail)
    if "uri" in values:
        if check:
            hosts_check(hosts=[host])
        else:
            transaction.on_commit(partial(hosts_check, hosts=[host]))
    host.refresh_from_db()
    return host


def _live_vm_names(host: Host) -> list[str]:
    return sorted(host.vms.exclude(status__in=("failed",)).values_list("name", flat=True))


def host_delete(*, host: Host, actor: Actor) -> None:
    """Remove a host: refused for the default host and while any VM (failed ones included: their rows
    point at it) is on it (409 host_in_use, naming them)."""
    _require_may(actor, "delete")
    if host.is_default:
        raise Conflict("the default host cannot be removed (a one-machine install runs on it)", code="host_default")
    users = sorted(host.vms.values_list("name", flat=True))
    if users:
        raise Conflict(
            f"host {host.name} has {len(users)} VM(s): {', '.join(users)}; move or delete them first",
            code="host_in_use",
            vms=users,
        )
    with transaction.atomic():
        audit(actor, "host.delete", target=f"host {host.name}", project=None, detail=host.uri)
        host.delete()
    log.info("host %s removed", host.name)


# --- reading what a host has --------------------------------------------------------------------------


def read_facts(uri: str) -> dict[str, Any]:
    """What the host at `uri` has, read from it (no database: safe in a thread). Raises VaporError when it does not answer."""
    hv = hypervisor.get_hypervisor(uri)
    caps = hv.capabilities()
    size = hv.host_resources()
    virt_type = "kvm" if caps.kvm else "qemu"
    firmware = hv.firmware_support(caps.host_arch, virt_type) if caps.host_arch else None
    pools = [
        {"name": p.name, "type": p.type, "active": p.active, "path": p.path, "capacity": p.capacity, "available": p.available}
        for p in hv.list_pools()
    ]
    networks = [{"name": n.name, "active": n.active, "bridge": n.bridge, "forward_mode": n.forward_mode} for n in hv.list_networks()]
    return {
        "arch": caps.host_arch,
        "arches": {arch: list(kinds) for arch, kinds in sorted(caps.arches.items())},
        "kvm": caps.kvm,
        "uefi": firmware.uefi if firmware else None,
        "secure_boot": firmware.secure_boot if firmware else None,
        "tpm": firmware.tpm if firmware else None,
        "cpus": size.cpus,
        "memory_bytes": size.memory_bytes,
        "cpu_model": size.model,
        "hostname": size.hostname,
        "pools": pools,
        "networks": networks,
        "bridges": list(hv.list_bridges()),
        "read_at": timezone.now().isoformat(),
    }


@dataclass
class _Checked:
    facts: dict[str, Any] | None  # None: it did not answer
    error: str


def _read(uri: str) -> _Checked:
    try:
        return _Checked(facts=read_facts(uri), error="")
    except VaporError as exc:
        return _Checked(facts=None, error=exc.message)
    except Exception as exc:  # a bug or a binding surprise must not stop the other hosts' checks
        log.exception("reading host %s failed", uri)
        return _Checked(facts=None, error=f"{type(exc).__name__}: {exc}")


def check_budget() -> float:
    """Seconds a check waits for one host: opening (VAPOR_HOST_CONNECT_TIMEOUT) plus the time keepalive takes to
    call a connection dead (VAPOR_HOST_KEEPALIVE, 3 missed probes)."""
    vapor = settings.VAPOR
    return float(vapor.host_connect_timeout) + 4 * float(vapor.host_keepalive)


def hosts_check(*, hosts: Iterable[Host] | None = None, budget: float | None = None) -> dict[str, str]:
    """Read every host (or `hosts`) in parallel, one thread each, and store health, facts, last seen/checked and
    the error; a host that has not answered within `budget` seconds is down. Returns name -> health."""
    targets = list(hosts if hosts is not None else Host.objects.all())
    if not targets:
        return {}
    budget = check_budget() if budget is None else budget
    answers = ask_each(lambda host: _read(host.libvirt_uri), targets, timeout=budget)  # a stuck host: its own timeouts
    results = {
        host.pk: got if got is not None else _Checked(facts=None, error=f"no answer within {budget:g} s")
        for host, got in zip(targets, answers, strict=True)
    }
    _store(results, timezone.now())
    health: dict[str, str] = {host.name: HostHealth.UP if results[host.pk].facts is not None else HostHealth.DOWN for host in targets}
    answering = [host.pk for host in targets if results[host.pk].facts is not None]
    if answering:
        # Failed provisionings whose rollback could not reach their host: undone now that it answers.
        from vms.jobs import vm_cleanup_leftovers

        vm_cleanup_leftovers(host_ids=answering)
    back = [host.pk for host in targets if host.health == HostHealth.DOWN and results[host.pk].facts is not None]
    if back:
        # The scheduled state refresh leaves down hosts alone: their VMs are reconciled here, as soon as they answer.
        from vms.services.states import synced_rows, vm_refresh_states

        ids = [row.pk for pk in back for row in synced_rows(host=pk)]
        if ids:
            vm_refresh_states(ids=ids)
    for host in targets:
        if results[host.pk].facts is None:
            log.warning("host %s is down: %s", host.name, results[host.pk].error)
    return health


def _store(results: dict[int, _Checked], now: datetime) -> None:
    with transaction.atomic():
        for pk, checked in results.items():
            if checked.facts is not None:
                Host.objects.filter(pk=pk).update(
                    health=HostHealth.UP, facts=checked.facts, last_seen_at=now, last_checked_at=now, last_error=""
                )
            else:
                Host.objects.filter(pk=pk).update(health=HostHealth.DOWN, last_checked_at=now, last_error=checked.error[:2000])


def host_check(*, host: Host, actor: Actor) -> Host:
    """Check one host now (the admin's Check now, POST .../check), dialling it again even within the retry
    window of a failed attempt; the host, refreshed."""
    _require_may(actor, "change")
    hypervisor.retry_now(host.libvirt_uri)
    hosts_check(hosts=[host])
    host.refresh_from_db()
    return host


def mark_health(*, up: Iterable[int] = (), down: dict[int, str] | None = None, now: datetime | None = None) -> None:
    """Record what a state refresh learnt: hosts that answered are up (seen now), the others down with the error."""
    now = now or timezone.now()
    up = list(up)
    if up:
        Host.objects.filter(pk__in=up).update(health=HostHealth.UP, last_seen_at=now, last_checked_at=now, last_error="")
    for pk, error in (down or {}).items():
        Host.objects.filter(pk=pk).update(health=HostHealth.DOWN, last_checked_at=now, last_error=error[:2000])


# --- how full a host is --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostUsage:
    """vCPUs and memory of a host's live VMs (provisioning, running, stopped, unknown: what may run there)
    against its budget: its CPUs and memory (from the last check) times the overcommit ratios; budgets
    and frees are None while the host's size is unknown (never read)."""

    vms: int
    vcpus: int
    memory_bytes: int
    vcpus_budget: int | None
    memory_budget_bytes: int | None

    @property
    def vcpus_free(self) -> int | None:
        return None if self.vcpus_budget is None else self.vcpus_budget - self.vcpus

    @property
    def memory_free_bytes(self) -> int | None:
        return None if self.memory_budget_bytes is None else self.memory_budget_bytes - self.memory_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "vms": self.vms,
            "vcpus": self.vcpus,
            "vcpus_budget": self.vcpus_budget,
            "vcpus_free": self.vcpus_free,
            "memory_bytes": self.memory_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            "memory_free_bytes": self.memory_free_bytes,
        }


def _usage(host: Host, vms: int, vcpus: int, memory_mb: int) -> HostUsage:
    cpus = host.facts.get("cpus") if isinstance(host.facts, dict) else None
    memory = host.facts.get("memory_bytes") if isinstance(host.facts, dict) else None
    return HostUsage(
        vms=vms,
        vcpus=vcpus,
        memory_bytes=memory_mb * MIB,
        vcpus_budget=int(cpus * host.cpu_overcommit) if isinstance(cpus, int) else None,
        memory_budget_bytes=int(memory * host.memory_overcommit) if isinstance(memory, int) else None,
    )


def hosts_usage(hosts: Iterable[Host] | None = None) -> dict[int, HostUsage]:
    """Every host's (or `hosts`') usage by host pk, in two queries whatever the number of hosts and VMs."""
    targets = list(hosts if hosts is not None else Host.objects.all())
    live = Q(vms__status__in=LIVE_STATUSES)
    sums = {
        row["pk"]: row
        for row in Host.objects.filter(pk__in=[h.pk for h in targets])
        .values("pk")
        .annotate(n=Count("vms", filter=live), vcpus=Sum("vms__vcpus", filter=live), memory=Sum("vms__memory_mb", filter=live))
    }
    usage = {}
    for host in targets:
        row = sums.get(host.pk, {})
        usage[host.pk] = _usage(host, row.get("n") or 0, row.get("vcpus") or 0, row.get("memory") or 0)
    return usage


def host_usage(host: Host) -> HostUsage:
    """One host's usage (see HostUsage)."""
    return hosts_usage([host])[host.pk]


def vm_counts() -> dict[int, int]:
    """Host pk -> number of VM rows on it (every status), one query."""
    return dict(VirtualMachine.objects.values_list("host").annotate(n=Count("pk")).values_list("host", "n"))
