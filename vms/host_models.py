"""Hypervisor hosts (issue 15): the libvirt daemons Vapor drives, as data.

Imported at the end of `vms.models`, so Django registers them with the app.
A one-machine install has one row, the `default` host, whose URI is empty:
it follows `VAPOR_LIBVIRT_URI`, so such an install changes nothing. Every
other host names its URI (qemu+tcp, qemu+tls, qemu+ssh, ...).

What the host is (capabilities, pools, networks, bridges, size) is read from
it by the health schedule and kept in `facts`; whether it answers (`health`,
`last_seen_at`, `last_error`) too. Nothing here opens a connection.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

DEFAULT_HOST = "default"

HOST_NAME = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
    "A host name is 1-63 lower-case letters, digits and dashes, not starting or ending with a dash.",
)


class HostHealth(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    UP = "up", "Up"
    DOWN = "down", "Down"


class Host(models.Model):
    """A libvirt host: where VMs are placed, each VM on exactly one."""

    name = models.CharField(max_length=63, unique=True, validators=[HOST_NAME])
    uri = models.CharField(
        "libvirt URI",
        max_length=512,
        blank=True,
        help_text="e.g. qemu+tls://kvm2.example.org/system. Empty (the default host only): VAPOR_LIBVIRT_URI.",
    )
    enabled = models.BooleanField(default=True, help_text="Placement may choose it. Its VMs keep running either way.")
    maintenance = models.BooleanField(default=False, help_text="Being worked on: no new VMs, its VMs stay where they are.")
    cpu_overcommit = models.FloatField(
        "CPU overcommit", default=4.0, validators=[MinValueValidator(0.1)], help_text="vCPUs placed per host CPU."
    )
    memory_overcommit = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.1)], help_text="Guest memory placed per byte of host memory."
    )
    labels = models.JSONField(default=dict, blank=True, help_text='Free-form key/value pairs, e.g. {"rack": "b2"}.')
    health = models.CharField(max_length=8, choices=HostHealth.choices, default=HostHealth.UNKNOWN)
    last_seen_at = models.DateTimeField(null=True, blank=True, help_text="When it last answered.")
    last_checked_at = models.DateTimeField(null=True, blank=True, help_text="When it was last asked.")
    last_error = models.TextField(blank=True, help_text="Why the last check failed (empty when it answered).")
    facts = models.JSONField(
        default=dict, blank=True, editable=False, help_text="What the host said it has, at the last check that answered."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def libvirt_uri(self) -> str:
        """The URI to connect to: its own, or VAPOR_LIBVIRT_URI for a host that names none (the default host)."""
        return self.uri or settings.VAPOR.libvirt_uri

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_HOST


def default_host_pk() -> int:
    """The `default` host's key (made if missing): where VMs go on a one-machine install."""
    host, _ = Host.objects.get_or_create(name=DEFAULT_HOST)
    return host.pk
