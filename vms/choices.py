from django.db import models

from vms.hypervisor.specs import IMAGE_FORMATS


class VmStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"
    MISSING = "missing", "Missing on host"
    UNKNOWN = "unknown", "Unknown (host down)"


LIVE_STATUSES = (VmStatus.PROVISIONING, VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.UNKNOWN)
"""A VM in one of these uses its template, disks and ISOs; the others are history."""

BUSY_STATUSES = (VmStatus.PROVISIONING, VmStatus.DELETING)
"""A VM in one of these is being worked on: pages showing it refresh themselves until that ends."""


class CdromSlot(models.TextChoices):
    PRIMARY = "primary", "Primary (install media)"
    SECONDARY = "secondary", "Secondary (drivers)"


class DiskSource(models.TextChoices):
    NEW = "new", "New volume"
    EXISTING = "existing", "Existing file"
    CLONE = "clone", "Clone"


# Built from the hypervisor's list: QCOW2 = "qcow2" (labelled "qcow2"), RAW = "raw".
# django-stubs types only the class form of TextChoices, hence the ignore.
DiskFormat = models.TextChoices(  # type: ignore[call-overload]
    "DiskFormat", [(fmt.upper(), (fmt, fmt)) for fmt in IMAGE_FORMATS], module=__name__
)


class DiskBus(models.TextChoices):
    VIRTIO = "virtio", "virtio"
    SATA = "sata", "SATA"
    SCSI = "scsi", "SCSI (virtio-scsi)"
    IDE = "ide", "IDE"


class NicType(models.TextChoices):
    NAT = "nat", "NAT (libvirt network)"
    BRIDGE = "bridge", "Host bridge"


class NicModel(models.TextChoices):
    VIRTIO = "virtio", "virtio"
    E1000E = "e1000e", "e1000e"
    RTL8139 = "rtl8139", "rtl8139"


class GraphicsType(models.TextChoices):
    VNC = "vnc", "VNC"
    SPICE = "spice", "SPICE"
    NONE = "none", "None"


class ConsoleType(models.TextChoices):
    VNC = "vnc", "Graphical (VNC)"
    SERIAL = "serial", "Serial"


class EventStatus(models.TextChoices):
    DONE = "done", "Done"
    SKIPPED = "skipped", "Skipped (already done)"
    FAILED = "failed", "Failed"
    UNDONE = "undone", "Undone"
    UNDO_FAILED = "undo_failed", "Undo failed"
    INFO = "info", "Info"
