"""cloud-init (NoCloud): what a VM's seed holds, a template's defaults, and users' SSH public keys.

Imported at the end of `vms.models`, so Django registers them with the app.
user_data may hold secrets (passwords, tokens): it is stored encrypted
(`vms.encryption`) and never written to a log, an event or an error message.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class CloudInitSettings(models.Model):
    """The five fields of a `cloud_init` object; a template's row holds only the fields it gives."""

    user_data_encrypted = models.TextField(blank=True, default="", help_text="user-data, encrypted (it may hold secrets).")
    has_user_data = models.BooleanField(default=False)
    ssh_authorized_keys = models.JSONField(default=list, blank=True, help_text="OpenSSH public keys, one per item.")
    hostname = models.CharField(max_length=253, blank=True, default="")
    network_config = models.TextField(blank=True, default="")
    meta_data = models.TextField(blank=True, default="")

    class Meta:
        abstract = True


class VmCloudInit(CloudInitSettings):
    """The seed of one VM: the ISO volume `<vm>-cidata.iso` in the VM's pool, attached as a SATA CD-ROM."""

    vm = models.OneToOneField("vms.VirtualMachine", on_delete=models.CASCADE, related_name="cloud_init")
    volume_name = models.CharField(max_length=255)
    path = models.CharField(max_length=4096, help_text="The seed ISO's file, as the domain names it.")
    target_dev = models.CharField(max_length=16)
    instance_id = models.CharField(max_length=64)

    class Meta:
        verbose_name = "cloud-init seed"

    def __str__(self) -> str:
        return self.volume_name


class TemplateCloudInit(CloudInitSettings):
    """A template's cloud-init defaults; `given` names the fields it sets (a request overrides them field by field)."""

    template = models.OneToOneField("vms.VmTemplate", on_delete=models.CASCADE, related_name="cloud_init")
    given = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "template cloud-init defaults"

    def __str__(self) -> str:
        return f"cloud-init defaults of {self.template_id}"


class SshPublicKey(models.Model):
    """An SSH public key a user keeps on their profile; used when a `cloud_init` names no keys."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_public_keys")
    name = models.CharField(max_length=100)
    key = models.TextField(help_text="One OpenSSH public key line: type, base64 and an optional comment.")
    fingerprint = models.CharField(max_length=64, help_text="SHA256:… as ssh-keygen -l shows it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "SSH public key"
        ordering = ["name", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="sshkey_user_name_unique"),
            models.UniqueConstraint(fields=["user", "fingerprint"], name="sshkey_user_fingerprint_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"
