"""Request and response shapes of the ISO API. Shape only: rules live in
`isos.services`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from guestos.choices import OsType
from isos.choices import Architecture, IsoStatus
from isos.models import IsoImage
from isos.services import MAX_TAGS, IsoMetadata
from vaporsite.api import StrictSerializer


class IsoSerializer(serializers.ModelSerializer):
    """One ISO as the spec shows it, plus status and download progress."""

    tags = serializers.SerializerMethodField()
    progress = serializers.FloatField(read_only=True, allow_null=True, help_text="Percent; 100 when ready.")
    # Not a URLField: a file registered from the host has none (""), which is not a "uri".
    source_url = serializers.CharField(read_only=True, help_text="The URL it was downloaded from; empty for a host file.")

    class Meta:
        model = IsoImage
        fields = [
            "id", "name", "path", "size", "os_type", "os_variant", "architecture", "boot_type", "description",
            "uploaded_at", "last_used", "use_count", "md5_hash", "sha256_hash", "tags",
            "status", "progress", "bytes_done", "bytes_total", "source_url", "error", "volume_label",
        ]  # fmt: skip
        read_only_fields = fields

    def get_tags(self, obj: IsoImage) -> list[str]:
        # Uses the prefetched tags: no query per ISO.
        return [tag.name for tag in obj.tags.all()]


class IsoHostCopySerializer(serializers.Serializer):
    """A copy of the ISO on a remote host (issue 15): what that host's VMs boot from."""

    host = serializers.CharField(source="host.name", read_only=True)
    status = serializers.CharField(read_only=True, help_text="copying, ready or failed.")
    progress = serializers.FloatField(read_only=True, allow_null=True, help_text="Percent of the bytes sent; 100 once checked.")
    bytes_done = serializers.IntegerField(read_only=True)
    bytes_total = serializers.IntegerField(read_only=True, allow_null=True)
    path = serializers.CharField(read_only=True, help_text="The copy's file on that host.")
    sha256 = serializers.CharField(read_only=True, help_text="As read back on that host.")
    checked_at = serializers.DateTimeField(read_only=True, allow_null=True)
    error = serializers.CharField(read_only=True)


class IsoDetailSerializer(IsoSerializer):
    """One ISO with its copies on remote hosts (the list leaves them out)."""

    host_copies = serializers.SerializerMethodField()

    class Meta(IsoSerializer.Meta):
        fields = [*IsoSerializer.Meta.fields, "host_copies"]
        read_only_fields = fields

    @extend_schema_field(IsoHostCopySerializer(many=True))
    def get_host_copies(self, obj: IsoImage) -> list[dict[str, object]]:
        # The VM app's rows, reached through their relation: the library does not import that app.
        copies = obj.host_copies.select_related("host").order_by("host__name")
        return list(IsoHostCopySerializer(copies, many=True).data)


class _MetadataFields(StrictSerializer):
    name = serializers.CharField(max_length=255, required=False)
    os_type = serializers.ChoiceField(choices=OsType.choices, required=False, allow_blank=True)
    os_variant = serializers.CharField(max_length=64, required=False, allow_blank=True)
    architecture = serializers.ChoiceField(choices=Architecture.choices, required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, max_length=4000)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=MAX_TAGS)

    def metadata(self) -> IsoMetadata:
        data = self.validated_data
        return IsoMetadata(
            name=data.get("name", ""),
            os_type=data.get("os_type", ""),
            os_variant=data.get("os_variant", ""),
            architecture=data.get("architecture", ""),
            description=data.get("description", ""),
            tags=tuple(data.get("tags", ())),
        )


class IsoCreateSerializer(_MetadataFields):
    """Register by `path` (a file on the host) or download from `url`: exactly one."""

    url = serializers.CharField(max_length=2048, required=False)
    path = serializers.CharField(max_length=4096, required=False)
    checksum = serializers.CharField(
        max_length=80, required=False, allow_blank=True, help_text="sha256:HEX or md5:HEX the download must match (url only)."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_url, has_path = bool(attrs.get("url")), bool(attrs.get("path"))
        if has_url and has_path:
            raise serializers.ValidationError({"url": ["give either url or path, not both"]})
        if not has_url and not has_path:
            raise serializers.ValidationError({"path": ["one of url or path is required"]})
        if has_path and attrs.get("checksum"):
            raise serializers.ValidationError({"checksum": ["only used with url: a registered file is hashed, not verified"]})
        return attrs


class IsoUpdateSerializer(_MetadataFields):
    """PATCH: metadata only. The file's facts (path, hashes, source) are read-only."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            fixed = sorted(set(data) & set(IsoSerializer.Meta.fields) - set(self.fields))
            if fixed:
                raise serializers.ValidationError({name: ["read-only: describes the file, cannot be changed"] for name in fixed})
        return super().to_internal_value(data)


class IsoFilterSerializer(StrictSerializer):
    tag = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    os_type = serializers.ChoiceField(choices=OsType.choices, required=False, allow_blank=True)
    architecture = serializers.ChoiceField(choices=Architecture.choices, required=False, allow_blank=True)
    status = serializers.ChoiceField(choices=IsoStatus.choices, required=False)
    search = serializers.CharField(max_length=200, required=False)


class IsoUploadCreateSerializer(_MetadataFields):
    """Start an upload: the file's name and size, the ISO's metadata, optionally the sha256 the file must have."""

    filename = serializers.CharField(max_length=255, help_text="The file's name; it keeps it in the download directory (`.iso` added).")
    size = serializers.IntegerField(min_value=0, help_text="The whole file's size in bytes; within VAPOR_DOWNLOAD_MAX_BYTES.")
    sha256 = serializers.CharField(
        max_length=64, required=False, allow_blank=True, help_text="64 hex digits the finished file must hash to, else it is refused."
    )


class IsoUploadSerializer(serializers.Serializer):
    """Where an upload stands: send the chunk that starts at `offset`."""

    id = serializers.CharField(read_only=True)
    filename = serializers.CharField(read_only=True)
    name = serializers.CharField(read_only=True)
    size = serializers.IntegerField(read_only=True)
    offset = serializers.IntegerField(read_only=True, help_text="Bytes received; the next chunk starts here.")
    iso = serializers.CharField(read_only=True, allow_null=True, help_text="The new ISO's id once the last byte landed, else null.")
    created_at = serializers.DateTimeField(read_only=True, allow_null=True)
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)
