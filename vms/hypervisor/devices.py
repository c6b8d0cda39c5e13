"""Changing a defined domain's devices: attach, detach, update (CD-ROM media), grow a disk.

A mixin of `LibvirtDriver`. `live` changes the running domain and its
definition together (VIR_DOMAIN_AFFECT_LIVE | CONFIG), so the change
survives a restart; without it only the definition changes (the next boot).
"""

from __future__ import annotations

import time
from typing import Any

import libvirt

from vaporsite.errors import Conflict
from vms.hypervisor._connection import Connection, calls
from vms.hypervisor.documents.domain import parse_domain

# A live detach is a request to the guest (PCIe hot-unplug); libvirt waits a few
# seconds for it, then returns while QEMU finishes. Vapor waits this long in all.
DETACH_WAIT_S = 15.0


def _flags(live: bool) -> int:
    return libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)


class DevicesMixin(Connection):
    """Device changes by domain name and device XML."""

    def _device_domain(self, name: str) -> Any:
        with calls(field="name"):
            return self._connection().lookupByName(name)

    def attach_device(self, name: str, xml: str, *, live: bool) -> None:
        domain = self._device_domain(name)
        with calls():
            domain.attachDeviceFlags(xml, _flags(live))

    def detach_device(self, name: str, xml: str, *, live: bool, target_dev: str = "") -> None:
        """Detach; with `live` and `target_dev`, return once the running domain no longer shows it."""
        domain = self._device_domain(name)
        with calls():
            domain.detachDeviceFlags(xml, _flags(live))
        if not (live and target_dev):
            return
        deadline = time.monotonic() + DETACH_WAIT_S
        while True:
            with calls():
                disks = parse_domain(domain.XMLDesc(0)).disks
            if all(d.target_dev != target_dev for d in disks):
                return
            if time.monotonic() > deadline:
                raise Conflict(
                    f"the guest has not released {target_dev} after {DETACH_WAIT_S:g} s; it is removed from the next boot",
                    code="detach_pending",
                )
            time.sleep(0.1)

    def update_device(self, name: str, xml: str, *, live: bool) -> None:
        """Change a device in place (a CD-ROM's medium); live ejects even a tray the guest locked."""
        domain = self._device_domain(name)
        flags = _flags(live) | (libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE if live else 0)
        with calls():
            domain.updateDeviceFlags(xml, flags)

    def block_resize(self, name: str, target_dev: str, size_bytes: int) -> None:
        """Grow a running domain's disk (QEMU resizes the image and tells the guest)."""
        domain = self._device_domain(name)
        with calls(field="size_gb"):
            domain.blockResize(target_dev, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    def resize_volume_path(self, path: str, size_bytes: int) -> None:
        """Grow the pool volume at `path` (a stopped domain's disk)."""
        with calls(field="size_gb"):
            self._connection().storageVolLookupByPath(path).resize(size_bytes, 0)

    def snapshot_names(self, name: str) -> list[str]:
        domain = self._device_domain(name)
        with calls():
            return sorted(s.getName() for s in domain.listAllSnapshots(0))
