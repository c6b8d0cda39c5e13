"""The VM page's cloud-init panel: the seed and what it holds; user_data only for users who may change the VM."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from vms.models import VirtualMachine
from vms.services.cloud_init import seed_of
from vms.services.ssh_keys import parse_public_key


def cloud_init_context(request: HttpRequest, vm: VirtualMachine, *, can_change: bool) -> dict[str, Any] | None:
    """What cloud_init_panel.html shows (None without a seed)."""
    seed = seed_of(vm)
    if seed is None:
        return None
    from vms import encryption

    keys = []
    for line in seed.ssh_authorized_keys:
        key = parse_public_key(line, field="key")
        keys.append({"type": key.type, "fingerprint": key.fingerprint, "comment": key.comment})
    return {
        "hostname": seed.hostname,
        "volume": seed.volume_name,
        "path": seed.path,
        "target_dev": seed.target_dev,
        "keys": keys,
        "network_config": seed.network_config,
        "meta_data": seed.meta_data,
        "user_data_set": seed.has_user_data,
        "can_change": can_change,
        "user_data": (encryption.decrypt(seed.user_data_encrypted) or "") if can_change and seed.has_user_data else "",
    }
