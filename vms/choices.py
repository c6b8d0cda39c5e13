from django.db import models


class VmStatus(models.TextChoices):
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    DELETING = "deleting", "Deleting"


class CdromSlot(models.TextChoices):
    PRIMARY = "primary", "Primary (install media)"
    SECONDARY = "secondary", "Secondary (drivers)"
