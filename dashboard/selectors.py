"""Reads for the admin index dashboard: VMs, host capacity, the ISO library, failures.

Only reads. The page costs a fixed number of queries however many rows
exist (one aggregate per model, one list of downloads, one list of failures
per model) and at most one hypervisor connection (the host's size and its
pools), whose answer is cached so that a page refreshing itself every few
seconds does not talk to libvirt each time.
Each section is built only for a user who may view its model. VNC passwords
are never read: every query names the columns it needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.admin.utils import quote
from django.core.cache import cache
from django.db.models import Count, Q, Sum
from django.urls import reverse

from isos.choices import BUSY_STATUSES as ISO_BUSY
from isos.choices import IsoStatus
from isos.models import IsoImage
from projects.access import in_visible_projects
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.choices import BUSY_STATUSES as VM_BUSY
from vms.choices import VmStatus
from vms.host_models import DEFAULT_HOST, Host
from vms.hypervisor import HostResources, PoolInfo
from vms.models import VirtualMachine
from vms.services.hosts import HostUsage, hosts_usage

HOST_CACHE_SECONDS = 30
HOST_ERROR_CACHE_SECONDS = 10  # shorter, so a daemon that is back shows up soon
REFRESH_SECONDS = 5
FAILURES_SHOWN = 10


class PermissionHolder(Protocol):
    def has_perm(self, perm: str, obj: Any = None) -> bool: ...


@dataclass(frozen=True)
class StatusCount:
    value: str
    label: str
    count: int
    url: str  # the changelist filtered on this status


@dataclass(frozen=True)
class Usage:
    """`used` of `total` (same unit); `percent` may pass 100 when the host is overcommitted."""

    used: int
    total: int

    @property
    def percent(self) -> int:
        return round(100 * self.used / self.total) if self.total else 0

    @property
    def meter_value(self) -> int:
        return min(self.percent, 100)


@dataclass(frozen=True)
class PoolSpace:
    """A storage pool's space in bytes; an inactive pool reports none."""

    name: str
    active: bool
    capacity: int
    available: int

    @property
    def used(self) -> Usage:
        return Usage(self.capacity - self.available, self.capacity)

    @classmethod
    def of(cls, pool: PoolInfo) -> PoolSpace:
        return cls(pool.name, pool.active, pool.capacity, pool.available)


@dataclass(frozen=True)
class HostSummary:
    """The host's resources and storage pools, or why they could not be read."""

    resources: HostResources | None
    error: str = ""
    pools: tuple[PoolSpace, ...] = ()


@dataclass(frozen=True)
class VmSection:
    by_status: list[StatusCount]
    total: int
    host: HostSummary
    memory_mb: Usage | None  # running VMs' memory against the host's (None: host unknown)
    vcpus: Usage | None
    running_memory_mb: int
    running_vcpus: int
    busy: bool
    hosts: tuple[HostLine, ...] = ()  # issue 15: every host, when there is more than the default one


@dataclass(frozen=True)
class HostLine:
    """One host on the dashboard, from the stored health and facts (no hypervisor call)."""

    name: str
    health: str
    vms: int
    usage: str  # live VMs' vCPUs and memory against the host's budget
    url: str


@dataclass(frozen=True)
class Download:
    name: str
    url: str
    status: str
    percent: float | None  # None while the total size is unknown
    bytes_done: int
    bytes_total: int | None


@dataclass(frozen=True)
class IsoSection:
    total: int
    total_bytes: int
    by_status: list[StatusCount]
    downloads: list[Download]
    busy: bool


@dataclass(frozen=True)
class Failure:
    kind: str
    name: str
    error: str
    at: datetime
    url: str


@dataclass(frozen=True)
class Dashboard:
    vms: VmSection | None  # None: the user may not view VMs
    isos: IsoSection | None
    failures: list[Failure] | None  # None: the user may view neither model
    refresh_seconds: int  # 0: nothing in progress, no refresh
    create_vm_url: str = ""  # "": the user may not create VMs


def _may_view(user: PermissionHolder, app_label: str, model_name: str) -> bool:
    # As ModelAdmin.has_view_permission: change implies view.
    return any(user.has_perm(f"{app_label}.{action}_{model_name}") for action in ("view", "change"))


def _status_counts(totals: dict[str, int], choices: type[VmStatus] | type[IsoStatus], changelist: str) -> list[StatusCount]:
    url = reverse(changelist)
    rows = []
    for value, label in choices.choices:
        rows.append(StatusCount(value, str(label), totals[f"n_{value}"], f"{url}?{urlencode({'status__exact': value})}"))
    return rows


def host_summary() -> HostSummary:
    """The host's memory, CPUs and pools, from the cache or from one hypervisor connection (two calls)."""
    uri = settings.VAPOR.libvirt_uri
    key = "vapor:dashboard:host:" + hashlib.sha256(uri.encode()).hexdigest()[:16]
    cached = cache.get(key)
    if isinstance(cached, HostSummary):
        return cached
    hv = hypervisor.get_hypervisor()
    try:
        resources = hv.host_resources()
        pools = tuple(sorted((PoolSpace.of(pool) for pool in hv.list_pools()), key=lambda p: p.name))
        summary = HostSummary(resources, pools=pools)
    except VaporError as exc:
        summary = HostSummary(None, exc.message)
    finally:
        hv.close()
    cache.set(key, summary, HOST_CACHE_SECONDS if summary.resources else HOST_ERROR_CACHE_SECONDS)
    return summary


def vm_section(user: PermissionHolder | None = None) -> VmSection:
    """Counts of the user's VMs by status; the host's memory and vCPUs against what every running VM uses
    (the host is shared by all projects)."""
    counts = {f"n_{value}": Count("id", filter=Q(status=value)) for value in VmStatus.values}
    running = Q(status=VmStatus.RUNNING, host__name=DEFAULT_HOST)  # the capacity shown is the default host's
    host_use = {"memory": Sum("memory_mb", filter=running), "vcpus": Sum("vcpus", filter=running)}
    if user is None or getattr(user, "is_superuser", False):  # every VM: one query
        totals = VirtualMachine.objects.aggregate(**counts, total=Count("id"), **host_use)
    else:  # a member: their VMs' counts, the host's use apart
        own = in_visible_projects(VirtualMachine.objects.all(), user)
        totals = {**own.aggregate(**counts, total=Count("id")), **VirtualMachine.objects.aggregate(**host_use)}
    memory, vcpus = totals["memory"] or 0, totals["vcpus"] or 0
    host = host_summary()
    resources = host.resources
    return VmSection(
        by_status=_status_counts(totals, VmStatus, "admin:vms_virtualmachine_changelist"),
        total=totals["total"],
        host=host,
        memory_mb=Usage(memory, resources.memory_bytes // 2**20) if resources else None,
        vcpus=Usage(vcpus, resources.cpus) if resources else None,
        running_memory_mb=memory,
        running_vcpus=vcpus,
        busy=any(totals[f"n_{value}"] for value in VM_BUSY),
        hosts=host_lines(),
    )


def host_lines() -> tuple[HostLine, ...]:
    """Every host with its health and usage, when there are several (two or three queries, whatever their number)."""
    hosts = list(Host.objects.order_by("name"))
    if len(hosts) < 2:
        return ()
    usage = hosts_usage(hosts)

    def text(used: HostUsage) -> str:
        vcpus = "?" if used.vcpus_budget is None else used.vcpus_budget
        memory = "?" if used.memory_budget_bytes is None else f"{used.memory_budget_bytes / 2**30:.1f}"
        return f"{used.vcpus}/{vcpus} vCPUs, {used.memory_bytes / 2**30:.1f}/{memory} GiB"

    return tuple(
        HostLine(h.name, h.health, usage[h.pk].vms, text(usage[h.pk]), reverse("admin:vms_host_change", args=[h.pk])) for h in hosts
    )


def iso_section() -> IsoSection:
    counts = {f"n_{value}": Count("id", filter=Q(status=value)) for value in IsoStatus.values}
    totals = IsoImage.objects.aggregate(**counts, total=Count("id"), size=Sum("size"))
    in_progress = IsoImage.objects.filter(status__in=ISO_BUSY).only("id", "name", "status", "bytes_done", "bytes_total")
    downloads = [
        Download(
            name=iso.name,
            url=reverse("admin:isos_isoimage_change", args=[quote(iso.pk)]),
            status=iso.get_status_display(),
            percent=iso.progress,
            bytes_done=iso.bytes_done,
            bytes_total=iso.bytes_total,
        )
        for iso in in_progress.order_by("name")
    ]
    return IsoSection(
        total=totals["total"],
        total_bytes=totals["size"] or 0,
        by_status=_status_counts(totals, IsoStatus, "admin:isos_isoimage_changelist"),
        downloads=downloads,
        busy=any(totals[f"n_{value}"] for value in ISO_BUSY),
    )


def recent_failures(*, vms: bool, isos: bool, user: PermissionHolder | None = None) -> list[Failure]:
    """The latest failed VMs and ISOs (those the flags allow), newest first."""
    failures: list[Failure] = []
    fields = ("pk", "name", "error", "updated_at")
    if vms:
        rows = (
            in_visible_projects(VirtualMachine.objects.all(), user)
            .filter(status=VmStatus.FAILED)
            .order_by("-updated_at")
            .values(*fields)[:FAILURES_SHOWN]
        )
        failures += [
            Failure("VM", r["name"], r["error"], r["updated_at"], reverse("admin:vms_virtualmachine_change", args=[r["pk"]])) for r in rows
        ]
    if isos:
        rows = IsoImage.objects.filter(status=IsoStatus.FAILED).order_by("-updated_at").values(*fields)[:FAILURES_SHOWN]
        failures += [
            Failure("ISO", r["name"], r["error"], r["updated_at"], reverse("admin:isos_isoimage_change", args=[quote(r["pk"])]))
            for r in rows
        ]
    failures.sort(key=lambda f: f.at, reverse=True)
    return failures[:FAILURES_SHOWN]


def dashboard_for(*, user: PermissionHolder) -> Dashboard:
    """What the admin index shows `user`."""
    see_vms = _may_view(user, "vms", "virtualmachine")
    see_isos = _may_view(user, "isos", "isoimage")
    vms = vm_section(user) if see_vms else None
    isos = iso_section() if see_isos else None
    busy = bool(vms and vms.busy) or bool(isos and isos.busy)
    return Dashboard(
        vms=vms,
        isos=isos,
        failures=recent_failures(vms=see_vms, isos=see_isos, user=user) if see_vms or see_isos else None,
        refresh_seconds=REFRESH_SECONDS if busy else 0,
        create_vm_url=reverse("admin:vms_virtualmachine_add") if user.has_perm("vms.add_virtualmachine") else "",
    )
