from django.db import models


class IsoStatus(models.TextChoices):
    DOWNLOADING = "downloading", "Downloading"
    HASHING = "hashing", "Hashing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


BUSY_STATUSES = (IsoStatus.DOWNLOADING, IsoStatus.HASHING)
"""A task works on an ISO in one of these: pages showing it refresh themselves, and it cannot be rehashed."""


class BootType(models.TextChoices):
    BIOS = "bios", "BIOS"
    UEFI = "uefi", "UEFI"
    HYBRID = "hybrid", "BIOS + UEFI"
    NONE = "none", "Not bootable"
    UNKNOWN = "", "Not inspected yet"


class Architecture(models.TextChoices):
    X86_64 = "x86_64", "x86_64"
    I686 = "i686", "i686"
    AARCH64 = "aarch64", "aarch64"
    PPC64LE = "ppc64le", "ppc64le"
    S390X = "s390x", "s390x"
    RISCV64 = "riscv64", "riscv64"
    UNKNOWN = "", "Unknown"
