"""The hypervisor adapter: the one place that talks to libvirt.

Everything above this package (services, tasks, commands, the API) uses the
typed `Hypervisor` interface and the plain records below, and catches
Vapor's own errors (`vaporsite.errors`). None of it imports `libvirt`, knows
its error codes or builds its XML, so a change of binding or a fake for unit
tests stays inside this package.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import socket
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vaporsite.errors import NotFound
from vms.hypervisor.specs import LiveSnapshot, SnapshotSpec

if TYPE_CHECKING:
    from vms.hypervisor.specs import NicSpec


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
    type: str = ""  # libvirt's pool backend: dir, logical, netfs, ... ("" when not read)


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


@dataclass(frozen=True)
class HostCapabilities:
    """What the host can run: per architecture, the domain types offered.

    `arches` maps e.g. "x86_64" to ("qemu", "kvm"); "qemu" is TCG emulation,
    "kvm" hardware virtualization. `kvm` says whether kvm is offered for the
    host's own architecture (what `VAPOR_VIRT_TYPE=auto` decides on).
    """

    arches: dict[str, tuple[str, ...]]
    kvm: bool
    host_arch: str


@dataclass(frozen=True)
class FirmwareSupport:
    """What the host's QEMU offers a domain of one arch/machine/type (its domain capabilities): UEFI
    firmware, Secure Boot, a TPM device. None: the host does not say (a driver without domain capabilities)."""

    uefi: bool | None = None
    secure_boot: bool | None = None
    tpm: bool | None = None


@dataclass(frozen=True)
class HostResources:
    """The host's size: physical memory in bytes, logical CPUs, CPU model and host name."""

    memory_bytes: int
    cpus: int
    model: str
    hostname: str


@dataclass(frozen=True)
class DomainInfo:
    """A domain as listed on the host; `state` in words (see DOMAIN_STATES).

    `persistent` is False for a transient domain (started from XML, never
    defined): it disappears when it stops.
    """

    name: str
    uuid: str
    state: str
    autostart: bool
    persistent: bool


@dataclass(frozen=True)
class ConsoleInfo:
    """A domain's graphical console as the host reports it.

    `type` is "vnc" or "spice" ("" for a headless domain); `port` is None
    until libvirt assigns one (autoport before the domain starts, or no
    console). `password_set` says whether one is set: the password itself
    never leaves the adapter.
    """

    type: str
    listen: str
    port: int | None
    password_set: bool


@dataclass(frozen=True)
class DiskUse:
    """A file a domain on the host uses as a disk or CD-ROM, as its definition names it.

    `readonly`: the domain only reads it (a `<readonly/>` disk, a CD-ROM, or
    `backing`: a file in the backing chain of one of its disks). A disk given
    as a pool volume is named by the volume's path. `path` is as libvirt
    wrote it (not resolved).
    """

    domain: str
    path: str
    readonly: bool
    backing: bool = False


@dataclass(frozen=True)
class DomainStats:
    """One running domain's counters from the host's bulk statistics call (issue 13, point 8).

    Counters only grow while the domain runs and start again from 0 when it
    starts again; `memory_used_kib` is what the guest uses as far as the host
    can tell (the balloon's available minus unused when the guest reports
    them, else QEMU's resident set, else the balloon's current size).
    """

    name: str
    cpu_time_ns: int
    vcpus: int
    memory_kib: int  # the balloon's current size: what the guest was given
    memory_used_kib: int
    block_read_bytes: int  # summed over the domain's disks
    block_write_bytes: int
    net_rx_bytes: int  # summed over its interfaces
    net_tx_bytes: int


@dataclass(frozen=True)
class HostStats:
    """The host's CPU time counters summed over its CPUs (ns) and its memory (KiB), read in one go."""

    cpus: int
    cpu_busy_ns: int  # every state but idle and iowait
    cpu_total_ns: int
    memory_total_kib: int
    memory_available_kib: int  # free + buffers + cached


@dataclass(frozen=True)
class GuestAddress:
    """One IP address of a domain's interface (issue 14, point 2), as one of libvirt's sources reports it.

    `mac` in lower case (what ties it to a NIC row); `family` "ipv4" or
    "ipv6"; `source` "lease" (the DHCP lease of a libvirt NAT network),
    "agent" (the guest agent) or "arp" (the host's ARP table; `prefix` 0
    there, ARP knows none).
    """

    mac: str
    address: str
    prefix: int
    family: str
    source: str


@dataclass(frozen=True)
class DomainAddresses:
    """A domain's guest-agent channel and its interfaces' addresses, read in one refresh.

    `channel`: its definition has the `org.qemu.guest_agent.0` channel;
    `connected`: an agent answers on it (only while it runs). `addresses` is
    empty for a domain that is not running.
    """

    name: str
    channel: bool
    connected: bool
    addresses: tuple[GuestAddress, ...] = ()


@dataclass(frozen=True)
class JobProgress:
    """A domain's running job (a migration, a save ...) as libvirt reports it; bytes, and ms since it began.

    `total_bytes`/`processed_bytes`/`remaining_bytes` count everything the job
    moves (memory and, in a copy-storage migration, disks); the `memory_*` and
    `disk_*` pairs split them. The totals may grow while a live migration runs
    (the guest dirties memory again).
    """

    operation: str  # "migration_out", "migration_in", "save", ... ("unknown" when libvirt does not say)
    elapsed_ms: int
    total_bytes: int
    processed_bytes: int
    remaining_bytes: int
    memory_total_bytes: int = 0
    memory_processed_bytes: int = 0
    disk_total_bytes: int = 0
    disk_processed_bytes: int = 0


class SerialChannel(Protocol):
    """A guest's serial port as an async byte pipe: `read()` gives b"" once it is closed."""

    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


DOMAIN_STATES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended")
"""A domain's state in words, indexed by libvirt's `virDomainState` number."""


class Hypervisor(Protocol):
    """What Vapor needs from a hypervisor host. Grows with the VM issues."""

    def list_pools(self) -> list[PoolInfo]: ...
    def pool(self, name: str) -> PoolInfo: ...
    def ensure_dir_pool(self, name: str, path: str) -> bool: ...
    def create_volume(self, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo: ...
    def volume(self, pool: str, name: str) -> VolumeInfo: ...
    def delete_volume(self, pool: str, name: str) -> None: ...
    def upload_volume(self, pool: str, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo: ...
    # ISO copies on remote hosts (vms/hypervisor/volume_upload.py): streamed from a local file, hashed where they lie
    def upload_volume_file(
        self, pool: str, name: str, path: str, *, fmt: str = "raw", owned: bool = True, progress: Callable[[int, int], None] | None = None
    ) -> VolumeInfo: ...
    def volume_sha256(self, pool: str, name: str, *, progress: Callable[[int, int], None] | None = None) -> str: ...
    def read_volume(self, path: str, offset: int, length: int) -> bytes: ...
    def list_networks(self) -> list[NetworkInfo]: ...
    def network_exists(self, name: str) -> bool: ...
    def ensure_nat_network(self, name: str, bridge: str, cidr: str) -> bool: ...
    def bridge_exists(self, name: str) -> bool: ...
    def list_bridges(self) -> list[str]: ...
    def capabilities(self) -> HostCapabilities: ...
    def max_vcpus(self, arch: str, virt_type: str, machine: str = "q35") -> int: ...
    def firmware_support(self, arch: str, virt_type: str, machine: str = "q35") -> FirmwareSupport: ...
    def host_resources(self) -> HostResources: ...
    def pool_paths(self) -> dict[str, str]: ...
    def volume_by_path(self, path: str) -> VolumeInfo | None: ...
    def clone_volume(
        self,
        pool: str,
        name: str,
        source_path: str,
        source_format: str,
        *,
        linked: bool,
        fmt: str = "qcow2",
        capacity_bytes: int | None = None,
    ) -> VolumeInfo: ...
    def domain_exists(self, name: str) -> bool: ...
    def define_domain(self, xml: str) -> str: ...
    def undefine_domain(self, name: str) -> None: ...
    def start_domain(self, name: str) -> None: ...
    def destroy_domain(self, name: str) -> None: ...
    def shutdown_domain(self, name: str) -> None: ...
    def reboot_domain(self, name: str) -> None: ...
    def set_autostart(self, name: str, on: bool) -> None: ...
    def domain_autostart(self, name: str) -> bool: ...
    # hardware changes (vms/hypervisor/hardware.py)
    def set_memory(self, name: str, memory_mib: int, *, live: bool) -> None: ...
    def set_max_memory(self, name: str, max_memory_mib: int) -> None: ...
    def set_vcpus(self, name: str, vcpus: int, *, live: bool) -> None: ...
    def set_max_vcpus(self, name: str, max_vcpus: int) -> None: ...
    def set_boot_order(self, name: str, devices: list[str]) -> None: ...
    def attach_nic(self, name: str, nic: NicSpec, *, live: bool) -> None: ...
    def detach_nic(self, name: str, mac: str, *, live: bool) -> None: ...
    def domain_state(self, name: str) -> str: ...
    def domain_xml(self, name: str, inactive: bool = False) -> str: ...
    def console(self, name: str) -> ConsoleInfo: ...
    def list_domain_names(self) -> list[str]: ...
    def list_domains(self) -> list[DomainInfo]: ...
    def disk_uses(self) -> list[DiskUse]: ...
    def open_graphics(self, name: str) -> socket.socket: ...
    def open_serial(self, name: str, loop: asyncio.AbstractEventLoop) -> SerialChannel: ...
    def domain_stats(self) -> list[DomainStats]: ...
    def host_stats(self) -> HostStats: ...
    def domain_addresses(self, names: Collection[str] | None = None) -> list[DomainAddresses]: ...
    # snapshots (vms/hypervisor/snapshots.py)
    def list_snapshots(self, name: str) -> list[LiveSnapshot]: ...
    def create_snapshot(self, name: str, spec: SnapshotSpec) -> LiveSnapshot: ...
    def revert_snapshot(self, name: str, snapshot: str) -> str: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...
    def save_nvram(self, name: str, pool: str, volume: str) -> VolumeInfo | None: ...
    def restore_nvram(self, name: str, pool: str, volume: str | None) -> None: ...
    # day two: disks (vms/hypervisor/devices.py)
    def attach_device(self, name: str, xml: str, *, live: bool) -> None: ...
    def detach_device(self, name: str, xml: str, *, live: bool, target_dev: str = "") -> None: ...
    def update_device(self, name: str, xml: str, *, live: bool) -> None: ...
    def block_resize(self, name: str, target_dev: str, size_bytes: int) -> None: ...
    def resize_volume_path(self, path: str, size_bytes: int) -> None: ...
    def snapshot_names(self, name: str) -> list[str]: ...
    # several hosts: live migration (vms/hypervisor/migration.py)
    def migrate_domain(
        self,
        name: str,
        dest_uri: str,
        *,
        copy_storage: bool,
        dest_address: str | None = None,
        timeout_s: float | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> None: ...
    def domain_job(self, name: str) -> JobProgress | None: ...
    def abort_migration(self, name: str) -> None: ...
    def nvram_path(self, name: str) -> str: ...
    def tpm_state_path(self, name: str) -> str: ...
    def host_file_exists(self, path: str) -> bool: ...
    def delete_host_file(self, path: str) -> bool: ...
    def close(self) -> None: ...


def volume_exists(hv: Hypervisor, pool: str, name: str) -> bool:
    """Whether `pool` holds a volume called `name` (False too when there is no such pool)."""
    try:
        hv.volume(pool, name)
    except NotFound:
        return False
    return True


_kept: dict[str, Hypervisor] = {}
_kept_pid = os.getpid()
_kept_lock = threading.Lock()


def get_hypervisor(uri: str | None = None) -> Hypervisor:
    """The process's driver for `uri` (default: settings.VAPOR.libvirt_uri): one kept per host and process.

    Its connection opens on first use and stays open for the next request
    (`close()` on it does nothing; `forget_hypervisors()` closes them all). A
    process made by fork starts with none of its parent's: a libvirt
    connection must not be shared across a fork. The import is deferred so
    that importing this package never loads the libvirt bindings.
    """
    global _kept_pid
    from django.conf import settings

    from vms.hypervisor.libvirt_driver import LibvirtDriver

    key = uri or settings.VAPOR.libvirt_uri
    with _kept_lock:
        if _kept_pid != os.getpid():
            _kept.clear()  # the parent's: neither used nor closed here
            _kept_pid = os.getpid()
        driver = _kept.get(key)
        if driver is None:
            driver = _kept[key] = LibvirtDriver(key, kept=True)
        return driver


def _close_kept_at_exit() -> None:
    """Close the kept connections while the interpreter still works: left to the garbage collector at shutdown,
    libvirt-python's own finaliser runs after its module is torn down and prints a traceback to stderr."""
    with contextlib.suppress(Exception):  # a host gone away at exit is not worth a traceback either
        forget_hypervisors()


def console_hypervisor(uri: str | None = None) -> Hypervisor:
    """The kept driver for consoles on `uri`, with libvirt's event loop started first (the serial stream needs it)."""
    from vms.hypervisor.consoles import start_event_loop

    start_event_loop()
    return get_hypervisor(uri)


def retry_now(uri: str | None = None) -> None:
    """Let the next call to `uri`'s kept driver dial the host again at once, even within VAPOR_HOST_RETRY_AFTER
    of a failed attempt (issue 15: an operator's explicit "Check now"; requests keep the retry window)."""
    from django.conf import settings

    key = uri or settings.VAPOR.libvirt_uri
    with _kept_lock:
        driver = _kept.get(key) if _kept_pid == os.getpid() else None
    if driver is not None and hasattr(driver, "_failed"):
        driver._failed = None


def forget_hypervisors() -> None:
    """Close every kept connection of this process (tests between cases; a worker when it stops)."""
    with _kept_lock:
        drivers = list(_kept.values()) if _kept_pid == os.getpid() else []
        _kept.clear()
    for driver in drivers:
        discard = getattr(driver, "discard", None)
        if discard is not None:
            discard()


atexit.register(_close_kept_at_exit)


__all__ = [
    "DOMAIN_STATES",
    "ConsoleInfo",
    "DiskUse",
    "DomainInfo",
    "DomainStats",
    "FirmwareSupport",
    "HostCapabilities",
    "HostResources",
    "HostStats",
    "Hypervisor",
    "JobProgress",
    "NetworkInfo",
    "PoolInfo",
    "SerialChannel",
    "VolumeInfo",
    "console_hypervisor",
    "forget_hypervisors",
    "get_hypervisor",
    "retry_now",
    "volume_exists",
]
