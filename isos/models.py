"""The ISO library."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models.functions import Upper

from guestos.choices import OsType
from isos.choices import Architecture, BootType, IsoStatus

ISO_ID_PREFIX = "iso-"


def new_iso_id() -> str:
    """`iso-` + 12 hex digits. Uniqueness against live and retired ids is
    enforced by `isos.services.iso_allocate_id`; this only draws a candidate."""
    return ISO_ID_PREFIX + secrets.token_hex(6)


class IsoTag(models.Model):
    """A label to organise ISOs ("ubuntu", "lts", "drivers")."""

    name = models.SlugField(max_length=64, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "ISO tag"

    def __str__(self) -> str:
        return self.name


class IsoImage(models.Model):
    """An ISO image known to Vapor: registered from a host path or downloaded.

    Only `ready` images may be attached to VMs. `downloaded` tells whether the
    file is Vapor's own (deleted with the entry) or an operator's (left alone).
    """

    id = models.CharField(primary_key=True, max_length=16, editable=False)
    name = models.CharField(max_length=255, unique=True)
    path = models.CharField(max_length=4096, unique=True, help_text="Absolute path on the host, symlinks resolved.")
    size = models.BigIntegerField(null=True, blank=True, help_text="Bytes.")
    # With `size`, what the file looked like when it was last hashed (or registered): a scan of the ISO
    # directories (isos.services.iso_scan_dirs) skips a file whose size and mtime still match, unread.
    file_mtime_ns = models.BigIntegerField(
        "file modified (ns)", null=True, blank=True, help_text="The file's mtime when it was last hashed, in ns since the epoch."
    )
    os_type = models.CharField("OS type", max_length=16, choices=OsType.choices, blank=True)
    os_variant = models.CharField("OS variant", max_length=64, blank=True, help_text="osinfo-db short id, e.g. ubuntu22.04.")
    architecture = models.CharField(max_length=16, choices=Architecture.choices, blank=True)
    boot_type = models.CharField(max_length=8, choices=BootType.choices, blank=True)
    volume_label = models.CharField(max_length=64, blank=True)
    description = models.TextField(blank=True)
    tags = models.ManyToManyField(IsoTag, blank=True, related_name="isos")
    uploaded_at = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    use_count = models.PositiveIntegerField(default=0)
    md5_hash = models.CharField(max_length=32, blank=True)
    sha256_hash = models.CharField(max_length=64, blank=True)

    status = models.CharField(max_length=16, choices=IsoStatus.choices, default=IsoStatus.READY, db_index=True)
    source_url = models.URLField(max_length=2048, blank=True)
    expected_checksum = models.CharField(max_length=80, blank=True, help_text="algorithm:hex the download must match.")
    downloaded = models.BooleanField(default=False, help_text="Vapor downloaded the file and deletes it with the entry.")
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Deliveries of the current download or hashing task that started.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "ISO image"
        # A reference by name ignoring case (isos.resolve) is name__iexact, UPPER(name) = UPPER(...) on PostgreSQL:
        # without this index it reads every row.
        indexes = [models.Index(Upper("name"), name="iso_name_upper")]
        constraints = [
            models.CheckConstraint(condition=models.Q(id__regex=r"^iso-[0-9a-f]{12}$"), name="iso_id_format"),
            models.CheckConstraint(condition=models.Q(status__in=IsoStatus.values), name="iso_status_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def progress(self) -> float | None:
        """Download progress in percent; capped at 99 until the file is verified."""
        if self.status == IsoStatus.READY:
            return 100.0
        if not self.bytes_total:
            return None
        percent = 100.0 * self.bytes_done / self.bytes_total
        return round(min(percent, 99.0), 1)


class RetiredIsoId(models.Model):
    """Ids of deleted ISOs, so an id is never handed out twice (scripts may
    hold on to one), and a record of who deleted what."""

    id = models.CharField(primary_key=True, max_length=16)
    name = models.CharField(max_length=255)
    path = models.CharField(max_length=4096)
    deleted_at = models.DateTimeField(auto_now_add=True)
    file_deleted = models.BooleanField(default=False)

    class Meta:
        verbose_name = "deleted ISO"
        ordering = ["-deleted_at"]

    def __str__(self) -> str:
        return f"{self.id} ({self.name})"


UPLOAD_ID_PREFIX = "upl-"


def new_upload_id() -> str:
    """`upl-` + 12 hex digits."""
    return UPLOAD_ID_PREFIX + secrets.token_hex(6)


class IsoUpload(models.Model):
    """An ISO being uploaded in chunks (isos.uploads). The row lives from the first request to the last byte, a
    cancel or the janitor; `offset` is how many bytes of the file are on disk, in its part file
    (`part_path`), and the client continues from there. When the last byte lands the file becomes an IsoImage
    and this row is deleted."""

    id = models.CharField(primary_key=True, max_length=16, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="iso_uploads")
    filename = models.CharField(max_length=255, unique=True, help_text="The file's name in the download directory.")
    name = models.CharField(max_length=255, unique=True)
    size = models.BigIntegerField(help_text="Bytes the whole file has.")
    offset = models.BigIntegerField(default=0, help_text="Bytes received so far.")
    os_type = models.CharField("OS type", max_length=16, choices=OsType.choices, blank=True)
    os_variant = models.CharField("OS variant", max_length=64, blank=True)
    architecture = models.CharField(max_length=16, choices=Architecture.choices, blank=True)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    expected_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        verbose_name = "ISO upload"
        constraints = [
            models.CheckConstraint(condition=models.Q(id__regex=r"^upl-[0-9a-f]{12}$"), name="iso_upload_id_format"),
            models.CheckConstraint(condition=models.Q(offset__gte=0, offset__lte=models.F("size")), name="iso_upload_offset_in_file"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename})"

    @property
    def final_path(self) -> Path:
        """Where the finished file goes (never over an existing file)."""
        return settings.VAPOR.download_dir / self.filename

    @property
    def part_path(self) -> Path:
        """Where the bytes are written until the last one lands: hidden, `.part`, as a download's."""
        return settings.VAPOR.download_dir / f".{self.filename}.{self.id}.part"
