"""Virtual machines and what they are made of."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from guestos.choices import OsType
from isos.choices import Architecture
from projects.models import Project, default_project_pk
from vms.choices import (
    BUSY_STATUSES,
    CdromSlot,
    ConsoleType,
    DiskBus,
    DiskFormat,
    DiskSource,
    EventStatus,
    GraphicsType,
    NicModel,
    NicType,
    VmStatus,
)
from vms.host_models import default_host_pk


class GuestSettings(models.Model):
    """What a VM and a template both say about the guest: OS, architecture, firmware, console."""

    os_type = models.CharField("OS type", max_length=16, choices=OsType.choices, blank=True)
    os_variant = models.CharField("OS variant", max_length=64, blank=True, help_text="osinfo-db short id, e.g. ubuntu22.04.")
    architecture = models.CharField(max_length=16, choices=Architecture.choices, default=Architecture.X86_64)
    uefi = models.BooleanField("UEFI", default=False)
    secure_boot = models.BooleanField(default=False)
    tpm = models.BooleanField("TPM 2.0", default=False)
    graphics_type = models.CharField(max_length=8, choices=GraphicsType.choices, default=GraphicsType.VNC)

    class Meta:
        abstract = True

    @property
    def firmware(self) -> str:
        """BIOS, or UEFI with what it adds, in words."""
        if not self.uefi:
            return "BIOS"
        return "UEFI" + (" + Secure Boot" if self.secure_boot else "") + (" + TPM" if self.tpm else "")


class VirtualMachine(GuestSettings):
    """A VM Vapor created (or is creating) on the libvirt host.

    The request as validated is stored here and in the related rows; the
    provisioning task works only from them. The VNC password is kept
    encrypted, only until the domain is defined (libvirt holds it then).
    """

    name = models.CharField(max_length=64, unique=True)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="vms", default=default_project_pk)
    host = models.ForeignKey(
        "Host", on_delete=models.PROTECT, related_name="vms", default=default_host_pk, help_text="The libvirt host it is on."
    )
    uuid = models.UUIDField(null=True, blank=True, unique=True, help_text="libvirt domain UUID.")
    memory_mb = models.PositiveIntegerField("memory (MB)")
    vcpus = models.PositiveSmallIntegerField("vCPUs")
    max_memory_mb = models.PositiveIntegerField(
        "maximum memory (MB)", null=True, blank=True, help_text="Memory can grow up to this while it runs (empty: the memory)."
    )
    max_vcpus = models.PositiveSmallIntegerField(
        "maximum vCPUs", null=True, blank=True, help_text="vCPUs can be added up to this while it runs (empty: the vCPUs)."
    )
    virt_type = models.CharField(max_length=8, default="kvm", help_text="libvirt domain type: kvm or qemu (TCG).")
    machine = models.CharField(max_length=32, default="q35")
    storage_pool = models.CharField(max_length=64, default="default")
    autostart = models.BooleanField(default=False)
    graphics_port = models.IntegerField(default=-1, help_text="-1: libvirt assigns one.")
    graphics_listen = models.CharField(max_length=64, default="127.0.0.1")
    graphics_password_encrypted = models.TextField(blank=True, editable=False)
    graphics_password_set = models.BooleanField(default=False)
    serial_log = models.CharField(max_length=4096, blank=True, help_text="File the serial console is written to (empty: pty).")
    disk_gb = models.PositiveBigIntegerField(
        "disk (GB)",
        default=0,
        help_text="GB of the volumes Vapor makes for it (new disks and clones), as counted against its project's quota.",
    )
    status = models.CharField(max_length=16, choices=VmStatus.choices, default=VmStatus.PROVISIONING, db_index=True)
    error = models.TextField(blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took the provisioning task.")
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Deliveries of the provisioning task that started.")
    template = models.ForeignKey(
        "VmTemplate", null=True, blank=True, on_delete=models.SET_NULL, related_name="vms", help_text="The template it was made from."
    )
    state = models.CharField(max_length=16, blank=True, help_text="The domain's state as last read from libvirt.")
    state_checked_at = models.DateTimeField(null=True, blank=True, help_text="When the state was last read from libvirt.")
    addresses_checked_at = models.DateTimeField(null=True, blank=True, help_text="When the NICs' addresses were last read from libvirt.")
    guest_agent_channel = models.BooleanField(default=False, help_text="The domain has the qemu-guest-agent channel (as last read).")
    guest_agent_connected = models.BooleanField(default=False, help_text="A guest agent answered on that channel (as last read).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "virtual machine"
        permissions = [
            ("use_console", "Can open and type in the consoles of virtual machines"),
            ("watch_console", "Can watch the serial consoles of virtual machines, without typing"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def memory_maximum(self) -> int:
        """MB the memory may grow to while the VM runs (the domain's `<memory>`)."""
        return max(self.max_memory_mb or 0, self.memory_mb)

    @property
    def vcpus_maximum(self) -> int:
        """vCPUs the VM may have while it runs (the domain's `<vcpu>`; `vcpus` are `current`)."""
        return max(self.max_vcpus or 0, self.vcpus)

    @property
    def busy(self) -> bool:
        """Being provisioned or deleted (`BUSY_STATUSES`): its page refreshes itself meanwhile."""
        return self.status in BUSY_STATUSES


class Disk(models.Model):
    """One hard disk of a VM: a new volume, an existing file or a clone."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="disks")
    order = models.PositiveSmallIntegerField()
    source = models.CharField(max_length=8, choices=DiskSource.choices)
    size_gb = models.PositiveIntegerField(null=True, blank=True)
    format = models.CharField(max_length=8, choices=DiskFormat.choices, default=DiskFormat.QCOW2)
    bus = models.CharField(max_length=8, choices=DiskBus.choices, default=DiskBus.VIRTIO)
    boot_order = models.PositiveSmallIntegerField(null=True, blank=True)
    readonly = models.BooleanField(default=False)
    linked = models.BooleanField(default=False, help_text="Clone as a qcow2 overlay backed by the source.")
    source_path = models.CharField(max_length=4096, blank=True, help_text="The existing file, or the clone's source.")
    source_format = models.CharField(max_length=8, choices=DiskFormat.choices, blank=True)
    path = models.CharField(max_length=4096, blank=True, help_text="The file the VM uses.")
    volume_name = models.CharField(max_length=255, blank=True)
    target_dev = models.CharField(max_length=8)
    created_by_vapor = models.BooleanField(default=False)
    source_chain = models.JSONField(
        null=True,
        blank=True,
        help_text="The source's backing chain as the request checked it (path, format, data file; top first). "
        "The worker checks it again before use; the domain states it to libvirt.",
    )

    class Meta:
        ordering = ["vm", "order"]
        constraints = [
            models.UniqueConstraint(fields=["vm", "order"], name="disk_order_unique"),
            # One writer per file, whatever the VMs' statuses: two requests racing past
            # validation cannot both attach it writable (vms.services.validation).
            models.UniqueConstraint(
                fields=["path"], condition=models.Q(readonly=False) & ~models.Q(path=""), name="disk_writable_path_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.vm} {self.target_dev}"


class NetworkInterface(models.Model):
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="nics")
    order = models.PositiveSmallIntegerField()
    type = models.CharField(max_length=8, choices=NicType.choices, default=NicType.NAT)
    source = models.CharField(max_length=64, default="default")
    model = models.CharField(max_length=8, choices=NicModel.choices, default=NicModel.VIRTIO)
    mac = models.CharField(max_length=17, unique=True)
    addresses = models.JSONField(
        default=list, blank=True, help_text='IP addresses as last read: [{"address", "prefix", "family", "source"}].'
    )
    boot_order = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["vm", "order"]
        verbose_name = "network interface"

    def __str__(self) -> str:
        return f"{self.vm} {self.type}:{self.source}"


class CdromAttachment(models.Model):
    """An ISO from the library in one of a VM's CD-ROM drives.

    PROTECT: an ISO in use cannot be deleted behind a VM's back."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="cdroms")
    iso = models.ForeignKey("isos.IsoImage", on_delete=models.PROTECT, related_name="attachments")
    slot = models.CharField(max_length=16, choices=CdromSlot.choices, default=CdromSlot.PRIMARY)
    resolved_by = models.CharField(max_length=16, blank=True, help_text="Which resolution rule matched the reference.")
    reference = models.CharField(max_length=4096, blank=True, help_text="The reference as the request gave it.")
    target_dev = models.CharField(max_length=8, blank=True)
    boot_order = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = "CD-ROM"
        ordering = ["vm", "slot"]
        constraints = [models.UniqueConstraint(fields=["vm", "slot"], name="one_iso_per_cdrom_slot")]

    def __str__(self) -> str:
        return f"{self.vm} {self.slot}: {self.iso_id}"


class VmEvent(models.Model):
    """One step of a VM's provisioning (or undo, or lifecycle action)."""

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    step = models.TextField(help_text="The step's name; clone steps name their source path, which may be long.")
    status = models.CharField(max_length=16, choices=EventStatus.choices)
    message = models.TextField(blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="Who asked for it."
    )
    source_address = models.GenericIPAddressField(null=True, blank=True, help_text="Where the request came from.")

    class Meta:
        ordering = ["vm", "at", "id"]
        verbose_name = "event"

    def __str__(self) -> str:
        return f"{self.vm} {self.step} {self.status}"


class VmTemplate(GuestSettings):
    """Defaults for new VMs: hardware, OS, firmware, networks, an ISO and disks.

    A create request naming the template gets these values for every field it
    does not give itself (`vms.services.template_apply.template_apply`).
    """

    name = models.CharField(max_length=64, unique=True)
    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="templates", default=default_project_pk)
    description = models.TextField(blank=True)
    memory_mb = models.PositiveIntegerField("memory (MB)", default=2048)
    vcpus = models.PositiveSmallIntegerField("vCPUs", default=2)
    max_memory_mb = models.PositiveIntegerField("maximum memory (MB)", null=True, blank=True, help_text="Empty: the memory.")
    max_vcpus = models.PositiveSmallIntegerField("maximum vCPUs", null=True, blank=True, help_text="Empty: the vCPUs.")
    storage_pool = models.CharField(max_length=64, blank=True, help_text="Empty: the request's (default: 'default').")
    iso = models.ForeignKey(
        "isos.IsoImage", null=True, blank=True, on_delete=models.PROTECT, related_name="templates", verbose_name="ISO",
        help_text="Attached as the install CD-ROM unless the request names another.",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "VM template"

    def __str__(self) -> str:
        return self.name


class TemplateDisk(models.Model):
    """Disk `order` of a template: a new volume of `size_gb`, or a clone of
    `clone_from` (grown to `size_gb` when that is given and larger)."""

    template = models.ForeignKey(VmTemplate, on_delete=models.CASCADE, related_name="disks")
    order = models.PositiveSmallIntegerField(default=0)
    size_gb = models.PositiveIntegerField("size (GB)", null=True, blank=True)
    clone_from = models.CharField(max_length=4096, blank=True, help_text="Base image to clone (absolute path in a pool or disk root).")
    source_format = models.CharField(max_length=8, choices=DiskFormat.choices, blank=True, help_text="Format of clone_from (qcow2).")
    linked = models.BooleanField(default=False, help_text="Clone as a qcow2 overlay backed by the base image.")
    format = models.CharField(max_length=8, choices=DiskFormat.choices, default=DiskFormat.QCOW2)
    bus = models.CharField(max_length=8, choices=DiskBus.choices, default=DiskBus.VIRTIO)
    boot_order = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["template", "order", "id"]
        verbose_name = "template disk"

    def __str__(self) -> str:
        return f"{self.template} disk {self.order}"


class TemplateNic(models.Model):
    template = models.ForeignKey(VmTemplate, on_delete=models.CASCADE, related_name="nics")
    order = models.PositiveSmallIntegerField(default=0)
    type = models.CharField(max_length=8, choices=NicType.choices, default=NicType.NAT)
    source = models.CharField(max_length=64, default="default")
    model = models.CharField(max_length=8, choices=NicModel.choices, default=NicModel.VIRTIO)

    class Meta:
        ordering = ["template", "order", "id"]
        verbose_name = "template network interface"

    def __str__(self) -> str:
        return f"{self.template} {self.type}:{self.source}"


class ConsoleTicket(models.Model):
    """A one-time pass to a VM's console, for one user and one console type.

    Only the SHA-256 of the ticket is kept: the ticket itself is shown once, to
    whoever asked for it. `used_at` is set by the one request that redeems it
    (`vms.services.consoles.console_ticket_redeem`); an unused ticket is worth
    nothing after `expires_at`.
    """

    token_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the ticket, hex.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="console_tickets")
    type = models.CharField(max_length=8, choices=ConsoleType.choices)
    read_only = models.BooleanField(default=False)
    source_address = models.GenericIPAddressField(null=True, blank=True, help_text="Where the ticket was asked for.")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)
    used_from = models.GenericIPAddressField(null=True, blank=True, help_text="Where the console was opened from.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "console ticket"

    def __str__(self) -> str:
        return f"{self.type} console of {self.vm} for {self.user}"


# Metrics for the graphs (issue 13, point 8): rates, not counters, sampled once a minute
# (vms.services.metrics); minute rows are averaged into 10-minute rows after an hour and
# those are dropped after a day.


class MetricSample(models.Model):
    """Rates over the `resolution` seconds that end at `at`: averages of those seconds."""

    at = models.DateTimeField()
    resolution = models.PositiveSmallIntegerField(help_text="Seconds the row covers: 60 (a minute's sample) or 600 (ten minutes averaged).")
    cpu_percent = models.FloatField(help_text="Of the VM's vCPUs (of the host's CPUs for the host).")
    memory_mib = models.FloatField(help_text="Used, in MiB.")
    disk_read_bps = models.FloatField(help_text="Bytes per second.")
    disk_write_bps = models.FloatField()
    net_rx_bps = models.FloatField()
    net_tx_bps = models.FloatField()

    class Meta:
        abstract = True


class VmMetricSample(MetricSample):
    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="metric_samples")

    class Meta:
        indexes = [models.Index(fields=["vm", "resolution", "at"], name="vms_metric_vm_res_at")]

    def __str__(self) -> str:
        return f"{self.vm_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class HostMetricSample(MetricSample):
    """The host's CPU and memory; its disk and network I/O are its running guests' summed."""

    memory_total_mib = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["resolution", "at"], name="vms_metric_host_res_at")]

    def __str__(self) -> str:
        return f"host at {self.at:%Y-%m-%d %H:%M:%S}"


class MetricCounters(models.Model):
    """The counters the last round read, to compute the next round's rates: one row for all VMs, one for the host.

    `counters` maps a VM's id (the host: "host") to its counters as the adapter gave them.
    """

    scope = models.CharField(max_length=16, unique=True)
    at = models.DateTimeField()
    counters = models.JSONField(default=dict)

    def __str__(self) -> str:
        return f"{self.scope} counters at {self.at:%Y-%m-%d %H:%M:%S}"


class VmSnapshot(models.Model):
    """A snapshot of a VM (issue 14 item 4; `vms.services.snapshots`).

    kind "internal": libvirt's internal snapshot inside the VM's qcow2 disks (with the running
    guest's memory when `memory`). A UEFI VM's snapshot also owns `nvram_volume`, a copy of its
    UEFI variables in the VM's pool, because libvirt snapshots no pflash NVRAM.
    """

    class Kind(models.TextChoices):
        INTERNAL = "internal", "internal (inside the qcow2 disks)"
        EXTERNAL = "external", "external (overlay files)"

    vm = models.ForeignKey(VirtualMachine, on_delete=models.CASCADE, related_name="snapshots")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.INTERNAL)
    memory = models.BooleanField(default=False, help_text="Holds the running guest's memory too (reverting resumes it).")
    vm_state = models.CharField("VM state", max_length=16, help_text="The domain's state when it was taken.")
    disks = models.JSONField(default=list, help_text="The target devices of the disks it holds.")
    hardware = models.JSONField(
        default=dict, help_text="The VM's hardware when it was taken: a revert brings libvirt's definition back to it."
    )
    nvram_volume = models.CharField("NVRAM copy", max_length=255, blank=True, help_text="A volume in the VM's pool (UEFI VMs).")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["vm", "created_at", "id"]
        verbose_name = "snapshot"
        constraints = [models.UniqueConstraint(fields=["vm", "name"], name="snapshot_name_unique_per_vm")]

    def __str__(self) -> str:
        return f"{self.vm} snapshot {self.name}"


# day two: cloud_init (its models live in their own module; imported here so the app registers them)
from vms.cloud_init_models import SshPublicKey, TemplateCloudInit, VmCloudInit  # noqa: E402, F401
from vms.host_models import Host, HostHealth  # noqa: E402, F401
from vms.iso_copies import IsoCopyStatus, IsoHostCopy  # noqa: E402, F401
from vms.migration_models import MigrationStatus, VmMigration  # noqa: E402, F401  # several hosts: live migration
