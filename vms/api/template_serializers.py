"""Request and response shapes of the VM template API (and of the template
import/export files). Shape only: rules live in `vms.services.templates`."""

from __future__ import annotations

import dataclasses
from typing import Any

from rest_framework import serializers

from guestos.choices import OsType
from isos.api.serializers import StrictSerializer
from isos.choices import Architecture
from vms.api.cloud_init_serializers import CloudInitInSerializer, cloud_init_request
from vms.api.serializers import NicInSerializer
from vms.choices import DiskBus, DiskFormat, GraphicsType
from vms.services.requests import DiskRequest, NicRequest
from vms.services.templates import TemplateData


class TemplateDiskSerializer(StrictSerializer):
    size = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, help_text="GB: a new volume, or (with clone_from) the size the clone grows to."
    )
    clone_from = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=4096, help_text="Base image to clone.")
    source_format = serializers.ChoiceField(choices=DiskFormat.choices, required=False, allow_null=True, allow_blank=True)
    linked = serializers.BooleanField(default=False, help_text="With clone_from: a qcow2 overlay backed by the base image.")
    format = serializers.ChoiceField(choices=DiskFormat.choices, default="qcow2")
    bus = serializers.ChoiceField(choices=DiskBus.choices, default="virtio")
    boot_order = serializers.IntegerField(required=False, allow_null=True)


class TemplateSerializer(StrictSerializer):
    """A template as the API takes it, and as import/export files hold it."""

    name = serializers.CharField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    memory = serializers.IntegerField(default=2048, help_text="MB")
    vcpus = serializers.IntegerField(default=2)
    max_memory = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="MB its VMs' memory may grow to while they run (default: memory)."
    )
    max_vcpus = serializers.IntegerField(
        required=False, allow_null=True, default=None, help_text="vCPUs its VMs may be given while they run (default: vcpus)."
    )
    os_type = serializers.ChoiceField(choices=OsType.choices, required=False, allow_blank=True, default="")
    os_variant = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    architecture = serializers.ChoiceField(choices=Architecture.choices, default="x86_64")
    uefi = serializers.BooleanField(default=False)
    secure_boot = serializers.BooleanField(default=False)
    tpm = serializers.BooleanField(default=False)
    graphics_type = serializers.ChoiceField(choices=GraphicsType.choices, default="vnc")
    storage_pool = serializers.CharField(required=False, allow_blank=True, default="", max_length=64)
    iso = serializers.CharField(required=False, allow_null=True, allow_blank=True, default=None, help_text="ISO id, name or path.")
    disks = TemplateDiskSerializer(many=True, required=False, default=list)
    networks = NicInSerializer(many=True, required=False, default=list)
    project = serializers.CharField(
        required=False,
        allow_null=True,
        default=None,
        max_length=64,
        help_text="The project's name. Default: `default`, else your only one.",
    )
    cloud_init = CloudInitInSerializer(
        required=False, allow_null=True, default=None, help_text="cloud-init defaults; a create request overrides them field by field."
    )

    def to_data(self, base: TemplateData | None = None) -> TemplateData:
        """The template the input describes; for a partial update, `base` with the given fields replaced."""
        data = dict(self.validated_data)
        if base is not None:
            raw = self.initial_data if isinstance(self.initial_data, dict) else {}
            data = {key: value for key, value in data.items() if key in raw}
            merged = {f.name: getattr(base, f.name) for f in dataclasses.fields(TemplateData)}
            merged.update(_template_values(data))
            return TemplateData(**merged)
        return TemplateData(**_template_values(data))


def _template_values(data: dict[str, Any]) -> dict[str, Any]:
    values = dict(data)
    if "disks" in values:
        values["disks"] = tuple(
            DiskRequest(**{**d, "clone_from": d.get("clone_from") or None, "source_format": d.get("source_format") or None})
            for d in values["disks"]
        )
    if "networks" in values:
        values["networks"] = tuple(NicRequest(**n) for n in values["networks"])
    if "iso" in values:
        values["iso"] = values["iso"] or None
    if "cloud_init" in values:
        values["cloud_init"] = cloud_init_request(values["cloud_init"])
    return values


def template_out(data: TemplateData) -> dict[str, Any]:
    """`data` in the input's shape (what export writes and the API returns)."""
    out = dataclasses.asdict(data)
    out["disks"] = [
        {key: value for key, value in disk.items() if key in TemplateDiskSerializer().fields and value not in (None, "")}
        for disk in out["disks"]
    ]
    out["networks"] = [{key: nic[key] for key in ("type", "source", "model")} for nic in out["networks"]]
    if data.cloud_init is not None:  # the fields the template gives (export keeps user_data; the API hides it from viewers)
        out["cloud_init"] = {key: list(v) if isinstance(v, tuple) else v for key, v in out["cloud_init"].items() if v is not None}
    return out


class TemplateOutSerializer(TemplateSerializer):
    id = serializers.IntegerField()
    iso_id = serializers.CharField(allow_null=True, help_text="The ISO's id (`iso` is its name).")
    vm_count = serializers.IntegerField(help_text="VMs made from it that still exist (failed ones included).")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
