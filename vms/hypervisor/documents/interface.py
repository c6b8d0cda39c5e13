"""A host network interface (`<interface>` of libvirt's interface driver), read only."""

from __future__ import annotations

from vms.hypervisor.documents import parse


def interface_type(document: str) -> str:
    """A host interface's kind as libvirt's interface driver reports it (bridge, ethernet, bond, vlan)."""
    return parse(document, root="interface").get("type", "")
