"""The hypervisor adapter: the one place that talks to libvirt.

Everything above this package (services, tasks, commands, the API) uses the
typed `Hypervisor` interface and the plain records below, and catches
Vapor's own errors (`vaporsite.errors`). None of it imports `libvirt`, knows
its error codes or builds its XML, so a change of binding or a fake for unit
tests stays inside this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PoolInfo:
    """A storage pool as libvirt reports it; sizes in bytes (0 while inactive)."""

    name: str
    active: bool
    autostart: bool
    path: str
    capacity: int
    allocation: int
    available: int


@dataclass(frozen=True)
class VolumeInfo:
    """A volume in a pool; `allocation` is what the file really uses on disk."""

    name: str
    path: str
    capacity: int
    allocation: int
    format: str


@dataclass(frozen=True)
class NetworkInfo:
    """A virtual network; `cidr` is its first IPv4 subnet ("" if none)."""

    name: str
    active: bool
    autostart: bool
    forward_mode: str
    bridge: str
    cidr: str


class Hypervisor(Protocol):
    """What Vapor needs from a hypervisor host. Grows with the VM issues."""

    def list_pools(self) -> list[PoolInfo]: ...
    def pool(self, name: str) -> PoolInfo: ...
    def ensure_dir_pool(self, name: str, path: str) -> bool: ...
    def create_volume(self, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo: ...
    def volume(self, pool: str, name: str) -> VolumeInfo: ...
    def delete_volume(self, pool: str, name: str) -> None: ...
    def list_networks(self) -> list[NetworkInfo]: ...
    def network_exists(self, name: str) -> bool: ...
    def ensure_nat_network(self, name: str, bridge: str, cidr: str) -> bool: ...
    def close(self) -> None: ...


def get_hypervisor(uri: str | None = None) -> Hypervisor:
    """A driver for `uri` (default: settings.VAPOR.libvirt_uri, read when connecting).

    The import is deferred so that importing this package never loads the
    libvirt bindings.
    """
    from vms.hypervisor.libvirt_driver import LibvirtDriver

    return LibvirtDriver(uri)


__all__ = ["Hypervisor", "NetworkInfo", "PoolInfo", "VolumeInfo", "get_hypervisor"]
