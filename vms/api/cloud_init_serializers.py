"""The `cloud_init` object of create-enhanced and templates, and the profile's SSH keys. Shape only:
the rules are in `vms.services.cloud_init` and `vms.services.ssh_keys`."""

from __future__ import annotations

from typing import Any

import yaml
from rest_framework import serializers

from vaporsite.api import StrictSerializer
from vms.cloud_init_models import SshPublicKey, VmCloudInit
from vms.services.requests import CloudInitRequest


class _YamlDocumentField(serializers.JSONField):
    """A YAML document given as text, or as a JSON object (written as YAML)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
        if isinstance(data, str):
            return data
        raise serializers.ValidationError("must be YAML text or an object")


class CloudInitInSerializer(StrictSerializer):
    user_data = serializers.CharField(
        required=False, allow_null=True, trim_whitespace=False, write_only=True, help_text="`#cloud-config` YAML or a `#!` script."
    )
    ssh_authorized_keys = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False, max_length=16384),
        required=False,
        allow_null=True,
        help_text="OpenSSH public keys. None given: the requesting user's profile keys.",
    )
    hostname = serializers.CharField(required=False, allow_null=True, max_length=253, help_text="Default: the VM's name.")
    network_config = _YamlDocumentField(required=False, allow_null=True, help_text="cloud-init network config (version 1 or 2).")
    meta_data = _YamlDocumentField(required=False, allow_null=True, help_text="Extra meta-data (a mapping).")


def cloud_init_request(data: dict[str, Any] | None) -> CloudInitRequest | None:
    if data is None:
        return None
    keys = data.get("ssh_authorized_keys")
    return CloudInitRequest(
        user_data=data.get("user_data"),
        ssh_authorized_keys=tuple(keys) if keys is not None else None,
        hostname=data.get("hostname"),
        network_config=data.get("network_config"),
        meta_data=data.get("meta_data"),
    )


def cloud_init_out(request: CloudInitRequest | None, *, can_change: bool) -> dict[str, Any] | None:
    """A template's defaults as the API shows them; user_data only to those who may change the template."""
    if request is None:
        return None
    out: dict[str, Any] = {
        "ssh_authorized_keys": list(request.ssh_authorized_keys) if request.ssh_authorized_keys is not None else None,
        "hostname": request.hostname,
        "network_config": request.network_config,
        "meta_data": request.meta_data,
        "user_data_set": request.user_data is not None,
    }
    if can_change:
        out["user_data"] = request.user_data
    return {key: value for key, value in out.items() if value is not None}


class CloudInitOutSerializer(serializers.Serializer):
    hostname = serializers.CharField()
    ssh_authorized_keys = serializers.ListField(child=serializers.CharField())
    network_config = serializers.CharField()
    meta_data = serializers.CharField()
    user_data_set = serializers.BooleanField(help_text="Whether user-data was given.")
    user_data = serializers.CharField(
        allow_null=True, required=False, help_text="Only for users who may change the VM (it may hold secrets); else left out."
    )
    seed_volume = serializers.CharField(help_text="The seed ISO's volume in the VM's pool (label cidata).")
    seed_path = serializers.CharField()
    target_dev = serializers.CharField(help_text="The seed's read-only SATA CD-ROM.")


def vm_cloud_init_out(seed: VmCloudInit | None, *, can_change: bool) -> dict[str, Any] | None:
    """A VM's seed as its detail shows it; user_data only to users who may change the VM."""
    if seed is None:
        return None
    from vms import encryption

    out: dict[str, Any] = {
        "hostname": seed.hostname,
        "ssh_authorized_keys": list(seed.ssh_authorized_keys),
        "network_config": seed.network_config,
        "meta_data": seed.meta_data,
        "user_data_set": seed.has_user_data,
        "seed_volume": seed.volume_name,
        "seed_path": seed.path,
        "target_dev": seed.target_dev,
    }
    if can_change:
        out["user_data"] = encryption.decrypt(seed.user_data_encrypted) if seed.has_user_data else None
    return out


class SshKeyInSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    key = serializers.CharField(max_length=16384, help_text="One OpenSSH public key line: `<type> <base64> [comment]`.")


class SshKeyOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = SshPublicKey
        fields = ["id", "name", "key", "fingerprint", "created_at"]
