"""Copies of library ISOs on remote hosts (issue 15, point 5).

Imported at the end of `vms.models`, so Django registers it with the app. The
library stays one, on the portal's machine; a VM on a remote host boots from
a copy in that host's ISO pool, made through libvirt's stream upload and
checked there by its sha256 (`vms.services.iso_copies`). One row per ISO and
host: the copy is made once and reused by every VM on that host.

When the ISO is deleted its rows stay with `iso` empty (`iso_ref` still names
it) until the copy's volume is gone from its host: a host that is down then
keeps the row as the record of what is left to remove.
"""

from __future__ import annotations

from django.db import models


class IsoCopyStatus(models.TextChoices):
    COPYING = "copying", "Copying"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class IsoHostCopy(models.Model):
    """A library ISO's copy in one host's ISO pool."""

    iso = models.ForeignKey(
        "isos.IsoImage",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="host_copies",
        help_text="Empty once the ISO was deleted: the copy is still to be removed from the host.",
    )
    iso_ref = models.CharField("ISO id", max_length=16, help_text="The ISO's id, kept after it is deleted.")
    host = models.ForeignKey("vms.Host", on_delete=models.CASCADE, related_name="iso_copies")
    status = models.CharField(max_length=8, choices=IsoCopyStatus.choices, default=IsoCopyStatus.COPYING)
    pool = models.CharField(max_length=255, blank=True, help_text="The host's storage pool holding the copy.")
    volume = models.CharField(max_length=255, blank=True, help_text="The copy's volume name in that pool.")
    path = models.CharField(max_length=4096, blank=True, help_text="The copy's file on the host: what the domain's CD-ROM names.")
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="The copy's sha256 as read back on the host.")
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When the copy's sha256 was checked on the host.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["iso_ref", "host"]
        verbose_name = "ISO copy on a host"
        verbose_name_plural = "ISO copies on hosts"
        constraints = [
            # One copy per ISO and host: VMs needing it at the same moment share one copy (a second insert fails).
            models.UniqueConstraint(fields=["iso", "host"], name="iso_copy_once_per_host"),
            models.CheckConstraint(condition=models.Q(status__in=IsoCopyStatus.values), name="iso_copy_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.iso_ref} on {self.host}"

    @property
    def progress(self) -> float | None:
        """Percent of the bytes sent; 100 only once the copy is checked."""
        if self.status == IsoCopyStatus.READY:
            return 100.0
        if not self.bytes_total:
            return None
        return round(min(100.0 * self.bytes_done / self.bytes_total, 99.0), 1)
