"""Hypervisor host payloads (issue 15): what a request may set, and what a host looks like in a response."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from vaporsite.api import StrictSerializer
from vms.host_models import Host
from vms.services.hosts import HostUsage


class HostInSerializer(StrictSerializer):
    """POST (name and uri required) and PATCH (every field optional; the name cannot change)."""

    name = serializers.CharField(max_length=63, help_text="1-63 lower-case letters, digits and dashes; how VMs and requests name it.")
    uri = serializers.CharField(
        max_length=512, help_text="libvirt URI: qemu+tls://host/system or qemu+ssh://user@host/system (qemu+tcp only on a trusted network)."
    )
    enabled = serializers.BooleanField(required=False, help_text="Placement may choose it (default true).")
    maintenance = serializers.BooleanField(required=False, help_text="Being worked on: no new VMs (default false).")
    cpu_overcommit = serializers.FloatField(required=False, help_text="vCPUs placed per host CPU, 0.1-100 (default 4).")
    memory_overcommit = serializers.FloatField(required=False, help_text="Guest memory per byte of host memory, 0.1-100 (default 1).")
    labels = serializers.DictField(required=False, help_text='Free-form key/value pairs, e.g. {"rack": "b2"}.')

    def to_data(self) -> dict[str, Any]:
        return dict(self.validated_data)


class PoolFactSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    active = serializers.BooleanField()
    path = serializers.CharField()
    capacity = serializers.IntegerField(help_text="bytes")
    available = serializers.IntegerField(help_text="bytes")


class NetworkFactSerializer(serializers.Serializer):
    name = serializers.CharField()
    active = serializers.BooleanField()
    bridge = serializers.CharField()
    forward_mode = serializers.CharField()


class HostFactsSerializer(serializers.Serializer):
    """What the host said it has at the last check that answered; {} until one has (so no key is required)."""

    arch = serializers.CharField(required=False, help_text="The host's own architecture, e.g. x86_64.")
    arches = serializers.DictField(
        required=False, child=serializers.ListField(child=serializers.CharField()), help_text="arch -> domain types (qemu, kvm)."
    )
    kvm = serializers.BooleanField(required=False)
    uefi = serializers.BooleanField(required=False, allow_null=True, help_text="UEFI firmware offered (null: the host cannot say).")
    secure_boot = serializers.BooleanField(required=False, allow_null=True)
    tpm = serializers.BooleanField(required=False, allow_null=True, help_text="An emulated TPM (swtpm) offered.")
    cpus = serializers.IntegerField(required=False)
    memory_bytes = serializers.IntegerField(required=False)
    cpu_model = serializers.CharField(required=False)
    hostname = serializers.CharField(required=False)
    pools = PoolFactSerializer(required=False, many=True)
    networks = NetworkFactSerializer(required=False, many=True)
    bridges = serializers.ListField(required=False, child=serializers.CharField())
    read_at = serializers.DateTimeField(required=False)


class HostUsageSerializer(serializers.Serializer):
    """The host's live VMs (provisioning, running, stopped, unknown) against its budget (size x overcommit)."""

    vms = serializers.IntegerField()
    vcpus = serializers.IntegerField()
    vcpus_budget = serializers.IntegerField(allow_null=True, help_text="CPUs x cpu_overcommit; null until the host was read.")
    vcpus_free = serializers.IntegerField(allow_null=True)
    memory_bytes = serializers.IntegerField()
    memory_budget_bytes = serializers.IntegerField(allow_null=True, help_text="memory x memory_overcommit; null until read.")
    memory_free_bytes = serializers.IntegerField(allow_null=True)


class HostOutSerializer(serializers.Serializer):
    """A host in a response (schema only: `host_out` builds it)."""

    name = serializers.CharField()
    uri = serializers.CharField(help_text="The URI Vapor connects to (the default host's: VAPOR_LIBVIRT_URI).")
    default = serializers.BooleanField(help_text="The default host (follows VAPOR_LIBVIRT_URI; cannot be removed).")
    enabled = serializers.BooleanField()
    maintenance = serializers.BooleanField()
    cpu_overcommit = serializers.FloatField()
    memory_overcommit = serializers.FloatField()
    labels = serializers.DictField()
    health = serializers.ChoiceField(choices=["unknown", "up", "down"])
    last_seen_at = serializers.DateTimeField(allow_null=True)
    last_checked_at = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField()
    facts = HostFactsSerializer()
    vm_count = serializers.IntegerField(help_text="VM rows on the host, any status.")
    usage = HostUsageSerializer()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def host_out(host: Host, *, vm_count: int, usage: HostUsage) -> dict[str, Any]:
    return {
        "name": host.name,
        "uri": host.libvirt_uri,
        "default": host.is_default,
        "enabled": host.enabled,
        "maintenance": host.maintenance,
        "cpu_overcommit": host.cpu_overcommit,
        "memory_overcommit": host.memory_overcommit,
        "labels": host.labels,
        "health": host.health,
        "last_seen_at": serializers.DateTimeField().to_representation(host.last_seen_at) if host.last_seen_at else None,
        "last_checked_at": serializers.DateTimeField().to_representation(host.last_checked_at) if host.last_checked_at else None,
        "last_error": host.last_error,
        "facts": host.facts,
        "vm_count": vm_count,
        "usage": usage.as_dict(),
        "created_at": serializers.DateTimeField().to_representation(host.created_at),
        "updated_at": serializers.DateTimeField().to_representation(host.updated_at),
    }
