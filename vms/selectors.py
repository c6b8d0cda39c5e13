"""Reads of VMs and templates, scoped to the projects the reader may see."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, QuerySet

from projects.access import in_visible_projects
from vaporsite.errors import VaporError
from vms import hypervisor
from vms.hypervisor import NetworkInfo, PoolInfo
from vms.models import Host, VirtualMachine, VmTemplate
from vms.parallel import answer_timeout, ask_each


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


def host_offer(host: Host | None = None) -> HostOffer:
    """One host's pools, networks and bridges (None: the default host), three reads over its kept
    connection; never raises a VaporError."""
    uri = host.libvirt_uri if host is not None else None
    try:
        hv = hypervisor.get_hypervisor(uri) if uri is not None else hypervisor.get_hypervisor()
        try:
            return HostOffer(pools=hv.list_pools(), networks=hv.list_networks(), bridges=hv.list_bridges())
        finally:
            hv.close()
    except VaporError as exc:
        return HostOffer(error=exc.message)


def placement_offer(hosts: list[Host]) -> HostOffer:
    """What automatic placement may use: every host's lists merged by name (a pool's largest free space wins),
    read in parallel and bounded like placement's questions. `error` only when no host could be read."""
    if len(hosts) <= 1:
        return host_offer(hosts[0] if hosts else None)
    answers = ask_each(host_offer, hosts)
    late = f"no answer within {answer_timeout():g} s"
    offers = [offer or HostOffer(error=f"{host.name}: {late}") for host, offer in zip(hosts, answers, strict=True)]
    readable = [offer for offer in offers if not offer.error]
    if not readable:
        errors = [offer.error for offer in offers]
        return HostOffer(error="; ".join(errors))
    pools: dict[str, PoolInfo] = {}
    networks: dict[str, NetworkInfo] = {}
    bridges: set[str] = set()
    for offer in readable:
        for pool in offer.pools:
            if pool.name not in pools or pool.available > pools[pool.name].available:
                pools[pool.name] = pool
        for network in offer.networks:
            networks.setdefault(network.name, network)
        bridges.update(offer.bridges)
    return HostOffer(
        pools=[pools[name] for name in sorted(pools)], networks=[networks[name] for name in sorted(networks)], bridges=sorted(bridges)
    )
