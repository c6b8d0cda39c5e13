"""Projects (who may see and change which VMs and templates, and how much they may use) and the audit trail."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from projects.choices import Role, Via

DEFAULT_PROJECT = "default"


def _names(text: str) -> list[str]:
    return [name for name in (part.strip() for part in text.replace("\n", ",").split(",")) if name]


class Project(models.Model):
    """A group of VMs and templates with its members, quotas and the host resources it may use.

    A one-person install needs none of this: the `default` project (made by
    the migration) holds everything, and superusers see every project.
    """

    name = models.SlugField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    max_vms = models.PositiveIntegerField("max VMs", null=True, blank=True, help_text="Empty: no limit.")
    max_vcpus = models.PositiveIntegerField("max vCPUs", null=True, blank=True, help_text="Empty: no limit.")
    max_memory_mb = models.PositiveBigIntegerField("max memory (MB)", null=True, blank=True, help_text="Empty: no limit.")
    max_disk_gb = models.PositiveBigIntegerField(
        "max disk (GB)", null=True, blank=True, help_text="Volumes Vapor creates (new disks and clones). Empty: no limit."
    )
    allowed_pools = models.TextField(blank=True, help_text="Storage pools its VMs may use, comma-separated. Empty: any pool.")
    allowed_networks = models.TextField(blank=True, help_text="libvirt networks its NICs may join, comma-separated. Empty: any.")
    allowed_bridges = models.TextField(blank=True, help_text="Host bridges its NICs may join, comma-separated. Empty: any.")
    members: models.ManyToManyField[Any, Any] = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="vapor_projects", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def pools(self) -> list[str]:
        return _names(self.allowed_pools)

    @property
    def networks(self) -> list[str]:
        return _names(self.allowed_networks)

    @property
    def bridges(self) -> list[str]:
        return _names(self.allowed_bridges)


def default_project_pk() -> int:
    """The `default` project's key (made if missing): where VMs and templates go when nobody says."""
    project, _ = Project.objects.get_or_create(name=DEFAULT_PROJECT, defaults={"description": "Everything not put elsewhere."})
    return project.pk


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="vapor_memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.OPERATOR)

    class Meta:
        ordering = ["project", "user"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_role_per_project")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.project}"


class AuditEntry(models.Model):
    """One action a person (or a command) took, kept after its VM or template is gone."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150, blank=True, help_text="Kept when the user is deleted.")
    source_address = models.GenericIPAddressField(null=True, blank=True)
    via = models.CharField("way in", max_length=8, choices=Via.choices)
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries")
    action = models.CharField(max_length=32, db_index=True, help_text="e.g. vm.create, vm.start, template.delete.")
    target = models.CharField(max_length=200, help_text="What it acted on: 'VM web-1', 'template small'.")
    vm_id = models.BigIntegerField(null=True, blank=True, help_text="The VM's id (the VM may be gone).")
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail entries"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '-'} {self.action} {self.target}"
