"""What a project uses: its VMs, their vCPUs, memory and the disk Vapor made for them.

Read through the reverse relation `vms` (VMs point at their project), so the
projects package need not import the VM app that sits above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import Coalesce

from projects.models import Project


@dataclass(frozen=True)
class Usage:
    vms: int
    vcpus: int
    memory_mb: int
    disk_gb: int


def _sums() -> dict[str, Any]:
    return {
        "use_vms": Count("vms"),
        "use_vcpus": Coalesce(Sum("vms__vcpus"), 0),
        "use_memory_mb": Coalesce(Sum("vms__memory_mb"), 0),
        "use_disk_gb": Coalesce(Sum("vms__disk_gb"), 0),
    }


def with_usage(projects: QuerySet[Project]) -> QuerySet[Project]:
    """Each project annotated with use_vms, use_vcpus, use_memory_mb and use_disk_gb (one query for a page)."""
    return projects.annotate(**_sums())


def project_usage(project: Project) -> Usage:
    row = Project.objects.filter(pk=project.pk).aggregate(**_sums())
    return Usage(vms=row["use_vms"], vcpus=row["use_vcpus"], memory_mb=row["use_memory_mb"], disk_gb=row["use_disk_gb"])
