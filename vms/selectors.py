"""Reads of VMs and templates, scoped to the projects the reader may see."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet

from projects.access import in_visible_projects
from vms.models import VirtualMachine, VmTemplate


def _scoped(queryset: QuerySet[Any], user: Any, project: str | None) -> QuerySet[Any]:
    queryset = in_visible_projects(queryset, user)
    if project:
        queryset = queryset.filter(project__name=project)
    return queryset


def vm_list(user: Any = None, *, project: str | None = None) -> QuerySet[VirtualMachine]:
    """VMs `user` may see (every VM for None: the worker, commands) with everything the API shows
    prefetched: a fixed number of queries."""
    queryset = VirtualMachine.objects.select_related("template", "project").prefetch_related("disks", "nics", "cdroms__iso")
    return _scoped(queryset, user, project).order_by("name")


def template_list(user: Any = None, *, project: str | None = None) -> QuerySet[VmTemplate]:
    """Templates `user` may see with their disks, NICs, ISO and how many VMs use them: a fixed number of queries."""
    queryset = VmTemplate.objects.select_related("iso", "project").prefetch_related("disks", "nics").annotate(vm_count=Count("vms"))
    return _scoped(queryset, user, project).order_by("name")
