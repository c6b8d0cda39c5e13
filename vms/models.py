"""Virtual machines. The VM-creation issue grows these; the ISO library needs
to know which VMs hold an ISO, so the CD-ROM attachment exists from the start."""

from __future__ import annotations

from django.db import models

from vms.choices import CdromSlot, VmStatus


class VirtualMachine(models.Model):
    """A VM Vapor created (or is creating) on the libvirt host."""

    name = models.CharField(max_length=64, unique=True)
    uuid = models.UUIDField(null=True, blank=True, unique=True, help_text="libvirt domain UUID.")
    memory_mb = models.PositiveIntegerField(default=1024)
    vcpus = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=16, choices=VmStatus.choices, default=VmStatus.PROVISIONING, db_index=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "virtual machine"

    def __str__(self) -> str:
        return self.name


class CdromAttachment(models.Model):
    """An ISO from the library in one of a VM's CD-ROM drives.

    PROTECT: an ISO in use cannot be deleted behind a VM's back."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="cdroms")
    iso = models.ForeignKey("isos.IsoImage", on_delete=models.PROTECT, related_name="attachments")
    slot = models.CharField(max_length=16, choices=CdromSlot.choices, default=CdromSlot.PRIMARY)
    resolved_by = models.CharField(max_length=16, blank=True, help_text="Which resolution rule matched the reference.")

    class Meta:
        verbose_name = "CD-ROM"
        constraints = [models.UniqueConstraint(fields=["vm", "slot"], name="one_iso_per_cdrom_slot")]

    def __str__(self) -> str:
        return f"{self.vm} {self.slot}: {self.iso_id}"
