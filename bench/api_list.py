"""The baseline of target 7: bare DRF list views of the ISO and VM tables, and a URLconf serving them beside Vapor's.

"Bare" is what DRF gives with no Vapor code at all: a `ListAPIView` over the same queryset (the same ordering and
prefetches, from the product's selectors), `ModelSerializer`s naming the same fields, and DRF's own
`LimitOffsetPagination` with Vapor's page sizes. The answer holds the same rows and values as Vapor's page (only the
envelope key differs: DRF's `results`), so the ratio measures what Vapor adds on top of DRF: its filter parsing, its
pagination helper and its serializers' extra work. Nothing here is part of the product; the benchmark's workers mount
this URLconf instead of `vaporsite.urls`, which it includes unchanged.
"""

from __future__ import annotations

from typing import Any

from django.urls import include, path
from rest_framework import generics, serializers
from rest_framework.pagination import LimitOffsetPagination

from bench.api_bench import BARE_ISOS, BARE_VMS
from isos.models import IsoImage
from isos.selectors import iso_list
from vaporsite.pagination import DEFAULT_LIMIT, MAX_LIMIT
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine
from vms.selectors import vm_list


class Pages(LimitOffsetPagination):
    default_limit = DEFAULT_LIMIT
    max_limit = MAX_LIMIT


class BareIsoSerializer(serializers.ModelSerializer):
    tags: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    progress = serializers.FloatField(read_only=True)

    class Meta:
        model = IsoImage
        fields = [
            "id", "name", "path", "size", "os_type", "os_variant", "architecture", "boot_type", "description",
            "uploaded_at", "last_used", "use_count", "md5_hash", "sha256_hash", "tags",
            "status", "progress", "bytes_done", "bytes_total", "source_url", "error", "volume_label",
        ]  # fmt: skip


class BareDiskSerializer(serializers.ModelSerializer):
    size = serializers.IntegerField(source="size_gb")

    class Meta:
        model = Disk
        fields = ["order", "source", "path", "size", "format", "bus", "target_dev", "boot_order", "readonly", "linked", "source_path"]


class BareCdromSerializer(serializers.ModelSerializer):
    iso_id = serializers.CharField()
    iso_name = serializers.CharField(source="iso.name")
    path = serializers.CharField(source="iso.path")

    class Meta:
        model = CdromAttachment
        fields = ["slot", "iso_id", "iso_name", "path", "reference", "resolved_by", "target_dev", "boot_order"]


class BareNicSerializer(serializers.ModelSerializer):
    class Meta:
        model = NetworkInterface
        fields = ["order", "type", "source", "model", "mac"]


class BareGraphicsSerializer(serializers.Serializer):
    type = serializers.CharField(source="graphics_type")
    port = serializers.IntegerField(source="graphics_port")
    listen = serializers.CharField(source="graphics_listen")
    password_set = serializers.BooleanField(source="graphics_password_set")


class BareVmSerializer(serializers.ModelSerializer):
    memory = serializers.IntegerField(source="memory_mb")
    template: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(slug_field="name", read_only=True)
    disks = BareDiskSerializer(many=True)
    cdroms = BareCdromSerializer(many=True)
    networks = BareNicSerializer(many=True, source="nics")
    graphics = BareGraphicsSerializer(source="*")

    class Meta:
        model = VirtualMachine
        fields = [
            "id", "name", "uuid", "status", "error", "memory", "vcpus", "os_type", "os_variant", "architecture", "virt_type",
            "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "template", "disks", "cdroms", "networks", "graphics",
            "state", "state_checked_at", "created_at", "updated_at",
        ]  # fmt: skip


class BareIsoList(generics.ListAPIView[IsoImage]):
    serializer_class = BareIsoSerializer
    pagination_class = Pages

    def get_queryset(self) -> Any:
        return iso_list()


class BareVmList(generics.ListAPIView[VirtualMachine]):
    serializer_class = BareVmSerializer
    pagination_class = Pages

    def get_queryset(self) -> Any:
        return vm_list()


urlpatterns = [
    path(BARE_ISOS.lstrip("/"), BareIsoList.as_view()),
    path(BARE_VMS.lstrip("/"), BareVmList.as_view()),
    path("", include("vaporsite.urls")),
]
