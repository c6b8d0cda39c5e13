"""Reads of VMs and templates, scoped to the projects the reader may see."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, QuerySet

from projects.access import in_visible_projects
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.hypervisor import NetworkInfo, PoolInfo
from vms.models import VirtualMachine, VmTemplate


def _scoped(queryset: QuerySet[Any], user: Any, project: str | None) -> QuerySet[Any]:
    queryset = in_visible_projects(queryset, user)
    if project:
        queryset = queryset.filter(project__name=project)
    return queryset


def vm_list(user: Any = None, *, project: str | None = None) -> QuerySet[VirtualMachine]:
    """VMs `user` may see (every VM for None: the worker, commands) with everything the API shows
    prefetched: a fixed number of queries."""
    queryset = VirtualMachine.objects.select_related("template", "project", "host").prefetch_related("disks", "nics", "cdroms__iso")
    return _scoped(queryset, user, project).order_by("name")


def template_list(user: Any = None, *, project: str | None = None) -> QuerySet[VmTemplate]:
    """Templates `user` may see with their disks, NICs, ISO and how many VMs use them: a fixed number of queries."""
    queryset = (
        VmTemplate.objects.select_related("iso", "project", "cloud_init").prefetch_related("disks", "nics").annotate(vm_count=Count("vms"))
    )
    return _scoped(queryset, user, project).order_by("name")


# --- the create page's picture of the host (issue 13, point 3) ---------------------------------------------


@dataclass(frozen=True)
class HostOffer:
    """What the host offers a new VM: pools, libvirt networks and Linux bridges, read in one go.

    `error` is set (and the lists empty) when the host could not be read: the
    page then falls back to typing the names.
    """

    pools: list[PoolInfo] = field(default_factory=list)
    networks: list[NetworkInfo] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)
    error: str = ""


def host_offer() -> HostOffer:
    """The host's pools, networks and bridges, one connection, three reads; never raises a VaporError."""
    try:
        hv = hypervisor.get_hypervisor()
        try:
            return HostOffer(pools=hv.list_pools(), networks=hv.list_networks(), bridges=hv.list_bridges())
        finally:
            hv.close()
    except VaporError as exc:
        return HostOffer(error=exc.message)
