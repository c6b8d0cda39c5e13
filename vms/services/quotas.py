"""A project's quotas: VMs, vCPUs, memory and disk, checked under a lock on the project's row.

`quota_check` runs inside the transaction that stores the new use: it locks
the project's row first (SELECT ... FOR UPDATE on PostgreSQL; SQLite's
IMMEDIATE transactions already serialize writers), so two creates racing for
the last unit of a quota cannot both pass. Every VM row counts, whatever its
status, until it is deleted: a failed VM still holds what it was given.
"""

from __future__ import annotations

import math

from projects.models import Project
from projects.usage import Usage, project_usage
from vaporsite.errors import Conflict

GB = 1024**3


# (quota field on Project, usage field, what it is in words, the request field to name)
QUOTAS = (
    ("max_vms", "vms", "VMs", "name"),
    ("max_vcpus", "vcpus", "vCPUs", "vcpus"),
    ("max_memory_mb", "memory_mb", "MB of memory", "memory"),
    ("max_disk_gb", "disk_gb", "GB of disk", "disks"),
)


def disk_gb(capacities: list[int]) -> int:
    """GB counted for volumes of these capacities (bytes), each rounded up."""
    return sum(math.ceil(capacity / GB) for capacity in capacities)


def quota_check(*, project: Project, asked: Usage) -> Usage:
    """409 `quota_exceeded` when `asked` on top of the project's use passes one of its quotas; the use otherwise.

    Locks the project's row until the transaction ends: call it in the
    transaction that stores what was asked.
    """
    locked = Project.objects.select_for_update().get(pk=project.pk)
    use = project_usage(locked)
    for quota_field, usage_field, words, field in QUOTAS:
        limit = getattr(locked, quota_field)
        wanted = getattr(asked, usage_field)
        if limit is None or not wanted:
            continue
        current = getattr(use, usage_field)
        if current + wanted > limit:
            raise Conflict(
                f"project {locked.name} may use {limit} {words}; it uses {current} and this asks for {wanted} more",
                field=field,
                code="quota_exceeded",
                quota=quota_field,
                use=current,
                asked=wanted,
                limit=limit,
                project=locked.name,
            )
    return use
