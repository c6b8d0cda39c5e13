"""Reads of VMs."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from vms.models import VirtualMachine, VmTemplate


def vm_list() -> QuerySet[VirtualMachine]:
    """VMs with everything the API shows prefetched: a fixed number of queries."""
    return VirtualMachine.objects.select_related("template").prefetch_related("disks", "nics", "cdroms__iso").order_by("name")


def template_list() -> QuerySet[VmTemplate]:
    """Templates with their disks, NICs, ISO and how many VMs use them: a fixed number of queries."""
    return VmTemplate.objects.select_related("iso").prefetch_related("disks", "nics").annotate(vm_count=Count("vms")).order_by("name")
