"""Request and response shapes of the VM API. Shape only: rules live in
`vms.services` (validation.py); the templates' shapes are in template_serializers.py."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from guestos.choices import OsType
from isos.choices import Architecture
from vaporsite.api import StrictSerializer
from vms.api.cloud_init_serializers import CloudInitInSerializer, CloudInitOutSerializer, cloud_init_request, vm_cloud_init_out
from vms.choices import DiskBus, DiskFormat, GraphicsType, NicModel, NicType
from vms.models import CdromAttachment, Disk, NetworkInterface, VirtualMachine, VmEvent
from vms.services.requests import DiskRequest, GraphicsRequest, NicRequest, VmRequest


class DiskInSerializer(StrictSerializer):
    size = serializers.IntegerField(required=False, help_text="GB: create a new volume of this size.")
    path = serializers.CharField(required=False, max_length=4096, help_text="Use this existing disk image.")
    clone_from = serializers.CharField(required=False, max_length=4096, help_text="Copy this image (or overlay it, with linked).")
    format = serializers.ChoiceField(choices=DiskFormat.choices, default="qcow2")
    source_format = serializers.ChoiceField(
        choices=DiskFormat.choices, required=False, help_text="Format of path/clone_from if not `format` (default qcow2 for clones)."
    )
    bus = serializers.ChoiceField(choices=DiskBus.choices, default="virtio")
    boot_order = serializers.IntegerField(required=False, allow_null=True)
    readonly = serializers.BooleanField(default=False)
    linked = serializers.BooleanField(default=False, help_text="With clone_from: a qcow2 overlay backed by the source.")


class NicInSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=NicType.choices, default="nat")
    source = serializers.CharField(max_length=64, default="default")  # type: ignore[assignment]
    model = serializers.ChoiceField(choices=NicModel.choices, default="virtio")


class GraphicsInSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=GraphicsType.choices, default="vnc")
    port = serializers.IntegerField(default=-1)
    password = serializers.CharField(required=False, allow_null=True, write_only=True, trim_whitespace=False, max_length=64)


class _BaseVmIn(StrictSerializer):
    name = serializers.CharField(max_length=200)
    memory = serializers.IntegerField(help_text="MB")
    vcpus = serializers.IntegerField()
    iso_path = serializers.CharField(required=False, allow_null=True, max_length=4096, help_text="ISO id, name, path or file name.")
    disk_size = serializers.IntegerField(required=False, help_text="Legacy: one new disk of this many GB.")
    disk_path = serializers.CharField(required=False, max_length=4096, help_text="Legacy: one existing disk.")
    project = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=64,
        help_text="The project's name. Default: the template's project, else `default`, else the only project where you are an operator.",
    )

    def legacy_disks(self, attrs: dict[str, Any]) -> tuple[DiskRequest, ...] | None:
        size, path = attrs.get("disk_size"), attrs.get("disk_path")
        if size is not None and path is not None:
            raise serializers.ValidationError({"disk_path": ["give disk_size or disk_path, not both"]})
        if size is not None:
            return (DiskRequest(size=size, given=frozenset({"size"})),)
        if path is not None:
            return (DiskRequest(path=path, given=frozenset({"path"})),)
        return None

    def to_request(self) -> VmRequest:
        raise NotImplementedError


def _keys(data: Any) -> frozenset[str]:
    return frozenset(data) if isinstance(data, dict) else frozenset()


class VmCreateSerializer(_BaseVmIn):
    """POST /api/v1/virtualmachines/create-enhanced.

    With `template`, memory and vcpus may be left out, and every field not
    given comes from the template (see vms.services.template_apply).
    """

    memory = serializers.IntegerField(required=False, help_text="MB. Required unless a template gives it.")
    vcpus = serializers.IntegerField(required=False, help_text="Required unless a template gives it.")
    max_memory = serializers.IntegerField(
        required=False, allow_null=True, help_text="MB the memory may grow to while the VM runs (default: memory); at least memory."
    )
    max_vcpus = serializers.IntegerField(
        required=False, allow_null=True, help_text="vCPUs the VM may be given while it runs (default: vcpus); at least vcpus."
    )
    disks = DiskInSerializer(many=True, required=False)
    secondary_iso = serializers.CharField(required=False, allow_null=True, max_length=4096)
    os_type = serializers.ChoiceField(choices=OsType.choices, required=False, allow_blank=True)
    os_variant = serializers.CharField(required=False, allow_blank=True, max_length=64)
    architecture = serializers.ChoiceField(choices=Architecture.choices, default="x86_64")
    uefi = serializers.BooleanField(default=False)
    secure_boot = serializers.BooleanField(default=False)
    tpm = serializers.BooleanField(default=False)
    networks = NicInSerializer(many=True, required=False)
    graphics = GraphicsInSerializer(required=False)
    storage_pool = serializers.CharField(default="default", max_length=64)
    autostart = serializers.BooleanField(default=False)
    template = serializers.CharField(
        required=False, allow_null=True, max_length=200, help_text="A template's name: it supplies every field the request leaves out."
    )
    cloud_init = CloudInitInSerializer(
        required=False,
        allow_null=True,
        help_text="A NoCloud seed (label cidata) attached as a CD-ROM; a template's defaults field by field.",
    )
    host = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=63,
        help_text="A host's name: create the VM there (404 if no such host; 409 `host_unavailable` when it is disabled, "
        "in maintenance or down, `host_full` when its memory or vCPU budget is used up). Default: automatic placement.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        legacy = self.legacy_disks(attrs)
        if legacy is not None and "disks" in attrs:
            raise serializers.ValidationError({"disks": ["give disks or the legacy disk_size/disk_path, not both"]})
        if not attrs.get("template"):
            missing = {name: ["This field is required (no template gives it)."] for name in ("memory", "vcpus") if name not in attrs}
            if missing:
                raise serializers.ValidationError(missing)
        return attrs

    def to_request(self) -> VmRequest:
        data = self.validated_data
        raw = self.initial_data if isinstance(self.initial_data, dict) else {}
        raw_disks: list[Any] = raw["disks"] if isinstance(raw.get("disks"), list) else []
        disks = self.legacy_disks(data) or tuple(
            DiskRequest(**d, given=_keys(raw_disks[i]) if i < len(raw_disks) else None) for i, d in enumerate(data.get("disks", []))
        )
        networks = tuple(NicRequest(**n) for n in data["networks"]) if "networks" in data else (NicRequest(),)
        given = {key for key in raw if key in self.fields} | ({"disks"} if "disk_size" in raw or "disk_path" in raw else set())
        return VmRequest(
            given=frozenset(given),
            name=data["name"],
            memory=data.get("memory", 0),
            vcpus=data.get("vcpus", 0),
            max_memory=data.get("max_memory"),
            max_vcpus=data.get("max_vcpus"),
            disks=disks,
            iso_path=data.get("iso_path"),
            secondary_iso=data.get("secondary_iso"),
            os_type=data.get("os_type", ""),
            os_variant=data.get("os_variant", ""),
            architecture=data["architecture"],
            uefi=data["uefi"],
            secure_boot=data["secure_boot"],
            tpm=data["tpm"],
            networks=networks,
            graphics=GraphicsRequest(**data["graphics"], given=_keys(raw.get("graphics"))) if "graphics" in data else GraphicsRequest(),
            storage_pool=data["storage_pool"],
            autostart=data["autostart"],
            template=data.get("template"),
            project=data.get("project"),
            cloud_init=cloud_init_request(data.get("cloud_init")),
            host=data.get("host") or None,
        )


class LegacyVmCreateSerializer(_BaseVmIn):
    """POST /api/v1/virtualmachines/ - the old request of the spec's migration section."""

    def to_request(self) -> VmRequest:
        data = self.validated_data
        return VmRequest(
            name=data["name"],
            memory=data["memory"],
            vcpus=data["vcpus"],
            disks=self.legacy_disks(data) or (),
            iso_path=data.get("iso_path"),
            project=data.get("project"),
        )


# --- responses ------------------------------------------------------------------


class DiskOutSerializer(serializers.ModelSerializer):
    size = serializers.IntegerField(source="size_gb", allow_null=True, help_text="GB, for new volumes.")

    class Meta:
        model = Disk
        fields = ["order", "source", "path", "size", "format", "bus", "target_dev", "boot_order", "readonly", "linked", "source_path"]


class CdromOutSerializer(serializers.ModelSerializer):
    iso_id = serializers.CharField()
    iso_name = serializers.CharField(source="iso.name")
    path = serializers.CharField(source="iso.path")

    class Meta:
        model = CdromAttachment
        fields = ["slot", "iso_id", "iso_name", "path", "reference", "resolved_by", "target_dev", "boot_order"]


class AddressOutSerializer(serializers.Serializer):
    address = serializers.CharField()
    prefix = serializers.IntegerField(help_text="0 when the source knows none (ARP).")
    family = serializers.ChoiceField(choices=["ipv4", "ipv6"])
    source = serializers.ChoiceField(  # type: ignore[assignment]
        choices=["lease", "agent", "arp"], help_text="A NAT network's DHCP lease, the guest agent, or the host's ARP table."
    )


class GuestAgentOutSerializer(serializers.Serializer):
    channel = serializers.BooleanField(help_text="The domain has the qemu-guest-agent channel.")
    connected = serializers.BooleanField(help_text="An agent answered on it at the last check.")


class NicOutSerializer(serializers.ModelSerializer):
    addresses = serializers.SerializerMethodField(help_text="As stored by the last state refresh (see addresses_checked_at).")

    class Meta:
        model = NetworkInterface
        fields = ["order", "type", "source", "model", "mac", "boot_order", "addresses"]

    @extend_schema_field(AddressOutSerializer(many=True))
    def get_addresses(self, nic: NetworkInterface) -> list[dict[str, Any]]:
        # The stored JSON as it is: no serializer per address (a list page shows thousands).
        return list(nic.addresses or [])


class GraphicsOutSerializer(serializers.Serializer):
    type = serializers.CharField(source="graphics_type")
    port = serializers.IntegerField(source="graphics_port", help_text="-1 until libvirt assigns one (see the VM's detail).")
    listen = serializers.CharField(source="graphics_listen")
    password_set = serializers.BooleanField(source="graphics_password_set")


_GRAPHICS = GraphicsOutSerializer()


class VmSerializer(serializers.ModelSerializer):
    memory = serializers.IntegerField(source="memory_mb")
    max_memory = serializers.IntegerField(source="memory_maximum", read_only=True, help_text="MB the memory may grow to while it runs.")
    max_vcpus = serializers.IntegerField(source="vcpus_maximum", read_only=True, help_text="vCPUs it may have while it runs.")
    project: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, help_text="The project it belongs to."
    )
    template: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True, help_text="The template it was made from."
    )
    host: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="name", read_only=True, help_text="The name of the host it runs on."
    )
    disks = DiskOutSerializer(many=True)
    cdroms = CdromOutSerializer(many=True)
    networks = NicOutSerializer(many=True, source="nics")
    graphics = serializers.SerializerMethodField()
    guest_agent = serializers.SerializerMethodField()

    class Meta:
        model = VirtualMachine
        fields = [
            "id", "name", "project", "host", "uuid", "status", "error", "memory", "vcpus", "max_memory", "max_vcpus", "os_type",
            "os_variant", "architecture", "virt_type",
            "uefi", "secure_boot", "tpm", "storage_pool", "autostart", "template", "disks", "cdroms", "networks", "graphics",
            "disk_gb", "state", "state_checked_at", "created_at", "updated_at", "addresses_checked_at", "guest_agent",
        ]  # fmt: skip

    @extend_schema_field(GuestAgentOutSerializer)
    def get_guest_agent(self, vm: VirtualMachine) -> dict[str, bool]:
        return {"channel": vm.guest_agent_channel, "connected": vm.guest_agent_connected}

    @extend_schema_field(GraphicsOutSerializer(allow_null=True))
    def get_graphics(self, vm: VirtualMachine) -> dict[str, Any] | None:
        if vm.graphics_type == GraphicsType.NONE:
            return None
        # One shared instance: a serializer made per VM cost 40% of a list page (its fields are deep-copied).
        data = dict(_GRAPHICS.to_representation(vm))
        live_port = self.context.get("live_port")
        if live_port is not None:
            data["port"] = live_port
        return data


class VmEventSerializer(serializers.ModelSerializer):
    user: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="Who asked for it (empty: the worker)."
    )

    class Meta:
        model = VmEvent
        fields = ["at", "step", "status", "message", "user", "source_address"]


class VmDetailSerializer(VmSerializer):
    state = serializers.SerializerMethodField(help_text="The domain's live state, read from libvirt for this response.")
    events = VmEventSerializer(many=True)
    cloud_init = serializers.SerializerMethodField()

    class Meta(VmSerializer.Meta):
        fields = [*VmSerializer.Meta.fields, "events", "cloud_init"]

    @extend_schema_field(CloudInitOutSerializer(allow_null=True))
    def get_cloud_init(self, vm: VirtualMachine) -> dict[str, Any] | None:
        from vms.services.cloud_init import seed_of

        return vm_cloud_init_out(seed_of(vm), can_change=bool(self.context.get("can_change")))

    def get_state(self, vm: VirtualMachine) -> str:
        return str(self.context.get("state", ""))


class PlacementOutSerializer(serializers.Serializer):
    host = serializers.CharField(help_text="The host the VM would be created on.")
    requested = serializers.BooleanField(help_text="True: the request named it (`host`); false: placement chose it.")
    refused = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Each other host placement did not choose, by name, with its reasons in words (empty when the host was named).",
    )


class DryRunSerializer(serializers.Serializer):
    plan = serializers.ListField(child=serializers.CharField())
    placement = PlacementOutSerializer(help_text="Where the VM would go, and why not elsewhere.")
    domain_xml = serializers.CharField()
    vm = VmSerializer()
    warnings = serializers.ListField(
        child=serializers.CharField(),
        help_text="Allowed, but worth a second look: an install ISO that will not boot with this firmware, "
        "new disks past the pool's free space.",
    )
