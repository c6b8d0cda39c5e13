"""The libvirt implementation of `vms.hypervisor.Hypervisor`.

`LibvirtDriver` is composed of one mixin per concern, each in its own module
of this package: `storage` (pools, volumes, clones), `host` (capabilities,
vCPU limits, networks, bridges), `stats` (the bulk
statistics the graphs sample), `domains` (lifecycle) and `migration`
(live migration to another host), all over the
shared connection in `_connection`. Those modules are the only ones in Vapor
that import `libvirt`; every call into the bindings turns `libvirtError`
into Vapor's errors there, so nothing above this package ever sees a libvirt
exception or error code. Callers import the driver from here.
"""

from __future__ import annotations

from vms.hypervisor.addresses import AddressesMixin
from vms.hypervisor.consoles import ConsolesMixin
from vms.hypervisor.devices import DevicesMixin
from vms.hypervisor.domains import DomainsMixin
from vms.hypervisor.hardware import HardwareMixin
from vms.hypervisor.host import HostMixin
from vms.hypervisor.migration import MigrationMixin
from vms.hypervisor.snapshots import SnapshotsMixin
from vms.hypervisor.stats import StatsMixin
from vms.hypervisor.storage import StorageMixin
from vms.hypervisor.volume_upload import VolumeUploadMixin


class LibvirtDriver(
    VolumeUploadMixin,
    StorageMixin,
    HostMixin,
    ConsolesMixin,
    StatsMixin,
    AddressesMixin,
    DomainsMixin,
    HardwareMixin,
    SnapshotsMixin,
    DevicesMixin,
    MigrationMixin,
):
    """A connection to one libvirt host, opened on first use.

    One instance may be shared by threads: libvirt connections are
    thread-safe, and opening is serialized so a burst of first calls opens
    one connection. A connection that died (daemon restarted) is reopened.
    """


__all__ = ["LibvirtDriver"]
