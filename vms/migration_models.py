"""A VM's live migration to another host (issue 15 point 6; `vms.services.migration`, `vms.jobs_migration`)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class MigrationStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


UNFINISHED_MIGRATIONS = (MigrationStatus.QUEUED, MigrationStatus.RUNNING)


class VmMigration(models.Model):
    """One move of a running VM from `source` to `destination` (libvirt peer-to-peer live migration).

    The VM's `host` changes only once the migration succeeded. At most one unfinished
    (queued or running) migration per VM: a partial unique index.
    """

    vm = models.ForeignKey("vms.VirtualMachine", on_delete=models.CASCADE, related_name="migrations")
    source = models.ForeignKey("vms.Host", on_delete=models.PROTECT, related_name="+")
    destination = models.ForeignKey("vms.Host", on_delete=models.PROTECT, related_name="+")
    copy_storage = models.BooleanField(default=True, help_text="Copy the writable disks to the destination (no shared storage).")
    status = models.CharField(max_length=10, choices=MigrationStatus.choices, default=MigrationStatus.QUEUED)
    processed_bytes = models.BigIntegerField(default=0, help_text="Memory and disk bytes moved so far, as libvirt reports them.")
    total_bytes = models.BigIntegerField(default=0, help_text="What libvirt expects to move (may grow while the guest runs).")
    progress_at = models.DateTimeField(null=True, blank=True, help_text="When the progress was last stored.")
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took the task.")
    attempts = models.PositiveIntegerField(default=0, help_text="Deliveries of the task that started.")

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "migration"
        constraints = [
            models.UniqueConstraint(fields=["vm"], condition=Q(status__in=["queued", "running"]), name="one_unfinished_migration_per_vm")
        ]

    def __str__(self) -> str:
        return f"{self.vm} -> {self.destination} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED_MIGRATIONS

    @property
    def percent(self) -> float | None:
        """processed / total in percent (one decimal); 100 once succeeded; None before libvirt said anything."""
        if self.status == MigrationStatus.SUCCEEDED:
            return 100.0
        if self.total_bytes <= 0:
            return None
        return round(min(100.0, 100.0 * self.processed_bytes / self.total_bytes), 1)
