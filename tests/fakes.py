"""An in-memory hypervisor for the Django-level tests (tier 2).

It keeps the `Hypervisor` interface's promises (NotFound, Conflict, idempotent
undefine/destroy), creates real files for volumes so deletion can be checked
on disk, and can be told to fail any call, to exercise rollback. The real
daemon is exercised by tests/integration.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import shutil
import socket
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from vaporsite.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from vms.hypervisor import (
    ConsoleInfo,
    DiskUse,
    DomainAddresses,
    DomainInfo,
    DomainStats,
    FirmwareSupport,
    GuestAddress,
    HostCapabilities,
    HostResources,
    HostStats,
    JobProgress,
    NetworkInfo,
    PoolInfo,
    SerialChannel,
    VolumeInfo,
)
from vms.hypervisor.documents.domain import parse_console, parse_disk_files, parse_domain
from vms.hypervisor.documents.hardware import (
    interface_of,
    interface_xml,
    read_hardware,
    with_boot_order,
    with_interface,
    with_memory,
    with_vcpus,
    without_interface,
)
from vms.hypervisor.documents.snapshot import NVRAM_DIR, parse_nvram_path, parse_tpm_state_path
from vms.hypervisor.specs import LiveSnapshot, NicSpec, SnapshotDisk, SnapshotSpec


@dataclass
class FakeDomain:
    xml: str
    state: str = "shutoff"
    autostart: bool = False
    persistent: bool = True
    counters: DomainStats | None = None  # what domain_stats() reports while it runs; from 0 at each start
    addresses: tuple[GuestAddress, ...] = ()  # what domain_addresses() reports while it runs (agent ones only when connected)
    agent_connected: bool = False  # an agent answers on the channel (while it runs, and only with the channel)


def zero_counters(name: str, vcpus: int = 1, memory_kib: int = 256 * 1024) -> DomainStats:
    return DomainStats(name, 0, vcpus, memory_kib, 0, 0, 0, 0, 0)


RFB_BANNER = b"RFB 003.008\n"


class FakeSerial:
    """A serial port that echoes what is written, until `hangup()` (the domain stopped)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = False
        self.written = bytearray()

    async def read(self) -> bytes:
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        self.written += data
        self._queue.put_nowait(data)

    def hangup(self) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, b"")

    def close(self) -> None:
        self.closed = True


def _fake_vnc_server(sock: socket.socket, received: bytearray) -> None:
    """Say the RFB banner, then echo every byte (and keep it in `received`) until the socket closes."""
    with sock:
        try:
            sock.sendall(RFB_BANNER)
            while data := sock.recv(65536):
                received += data
                sock.sendall(data)
        except OSError:
            pass


@dataclass
class FakeHypervisor:
    pool_dir: Path
    pools: dict[str, Path] = field(default_factory=dict)
    networks: set[str] = field(default_factory=lambda: {"default"})
    bridges: set[str] = field(default_factory=lambda: {"br0", "br-internal"})
    host: HostResources = field(default_factory=lambda: HostResources(16 * 2**30, cpus=8, model="x86_64", hostname="fakehost"))
    domains: dict[str, FakeDomain] = field(default_factory=dict)
    fail: dict[str, Exception] = field(default_factory=dict)  # method name -> error to raise
    fail_after: dict[str, int] = field(default_factory=dict)  # method name -> calls that succeed first
    calls: Counter[str] = field(default_factory=Counter)
    max_vcpu: int = 255
    clone_capacities: dict[str, int | None] = field(default_factory=dict)  # volume -> capacity_bytes asked for
    pool_capacity: int = 10**12  # what every pool reports, in bytes
    pool_available: int = 10**12
    vnc_received: dict[str, bytearray] = field(default_factory=dict)  # domain -> bytes its fake VNC server got
    serials: dict[str, list[FakeSerial]] = field(default_factory=dict)
    host_counters: HostStats = field(default_factory=lambda: HostStats(8, 0, 0, 16 * 2**20, 8 * 2**20))
    _console_sockets: dict[str, list[socket.socket]] = field(default_factory=dict)
    snapshots: dict[str, dict[str, tuple[LiveSnapshot, str, dict[str, bytes]]]] = field(default_factory=dict)  # domain -> name -> taken
    nvram: dict[str, bytes] = field(default_factory=dict)  # domain -> its UEFI variables, once it has some
    host_files: set[str] = field(default_factory=set)  # other paths host_file_exists finds (a TPM state directory ...)
    device_changes: list[tuple[str, str, str, bool]] = field(default_factory=list)  # (call, domain, target dev, live)
    resized: dict[str, int] = field(default_factory=dict)  # target dev (live) or volume path (stopped) -> bytes
    firmware: FirmwareSupport = field(default_factory=lambda: FirmwareSupport(uefi=True, secure_boot=True, tpm=True))
    peers: dict[str, FakeHypervisor] = field(default_factory=dict)  # URI -> the host a migration there reaches
    jobs: dict[str, JobProgress] = field(default_factory=dict)  # domain -> the job domain_job() reports as running
    uploaded_files: list[tuple[str, str, str]] = field(default_factory=list)  # (pool, volume, local path) per upload_volume_file
    corrupt_uploads: bool = False  # upload_volume_file flips the copy's first byte

    def __post_init__(self) -> None:
        self.pools.setdefault("default", self.pool_dir)

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.fail and self.calls[name] > self.fail_after.get(name, 0):
            raise self.fail[name]

    # --- storage -----------------------------------------------------------
    def list_pools(self) -> list[PoolInfo]:
        self._call("list_pools")
        return [self.pool(n) for n in self.pools]

    def pool_paths(self) -> dict[str, str]:
        return {n: str(p) for n, p in self.pools.items()}

    def ensure_dir_pool(self, name: str, path: str) -> bool:
        self._call("ensure_dir_pool")
        if name in self.pools:
            return False
        Path(path).mkdir(parents=True, exist_ok=True)
        self.pools[name] = Path(path)
        return True

    def pool(self, name: str) -> PoolInfo:
        if name not in self.pools:
            raise NotFound(f"no storage pool with matching name '{name}'")
        capacity, available = self.pool_capacity, self.pool_available
        return PoolInfo(name, True, True, str(self.pools[name]), capacity, capacity - available, available, "dir")

    def _vol_path(self, pool: str, name: str) -> Path:
        return self.pools[self.pool(pool).name] / name

    def volume(self, pool: str, name: str) -> VolumeInfo:
        path = self._vol_path(pool, name)
        if not path.exists():
            raise NotFound(f"no storage vol with matching name '{name}'")
        return VolumeInfo(name, str(path), 0, path.stat().st_size, "qcow2")

    def create_volume(self, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo:
        self._call("create_volume")
        path = self._vol_path(pool, name)
        if path.exists():
            raise Conflict(f"storage volume '{name}' exists already")
        path.write_bytes(b"new volume " + str(capacity_bytes).encode())
        return self.volume(pool, name)

    def upload_volume(self, pool: str, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        self._call("upload_volume")
        path = self._vol_path(pool, name)
        if path.exists():
            raise Conflict(f"storage volume '{name}' exists already")
        path.write_bytes(data)
        return self.volume(pool, name)

    def upload_volume_file(
        self, pool: str, name: str, path: str, *, fmt: str = "raw", owned: bool = True, progress: Callable[[int, int], None] | None = None
    ) -> VolumeInfo:
        """As libvirt's stream upload: the file copied in chunks into the pool's directory (`corrupt_uploads`: the
        copy's first byte flipped, as a bad link would); `progress(done, total)` after each chunk."""
        self._call("upload_volume_file")
        target = self._vol_path(pool, name)
        if target.exists():
            raise Conflict(f"storage volume '{name}' exists already")
        total = Path(path).stat().st_size
        done = 0
        with open(path, "rb") as source, open(target, "wb") as sink:
            while chunk := source.read(64 * 1024):
                if done == 0 and self.corrupt_uploads:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                sink.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        self.uploaded_files.append((pool, name, path))
        return self.volume(pool, name)

    def volume_sha256(self, pool: str, name: str, *, progress: Callable[[int, int], None] | None = None) -> str:
        self._call("volume_sha256")
        path = self._vol_path(pool, name)
        if not path.exists():
            raise NotFound(f"no storage vol with matching name '{name}'")
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def read_volume(self, path: str, offset: int, length: int) -> bytes:
        """As libvirt's stream download of a volume found by its exact path: only files directly in a pool's directory."""
        self._call("read_volume")
        if self.volume_by_path(path) is None or Path(path).is_symlink():
            raise NotFound(f"{path} is no volume of a storage pool on the host", field="path")
        with open(path, "rb") as source:
            source.seek(offset)
            return source.read(length)

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
    ) -> VolumeInfo:
        self._call("clone_volume")
        path = self._vol_path(pool, name)
        if path.exists():
            raise Conflict(f"storage volume '{name}' exists already")
        if linked:
            path.write_text(f"overlay of {source_path}")
        else:
            shutil.copyfile(source_path, path)
        self.clone_capacities[name] = capacity_bytes
        return self.volume(pool, name)

    def volume_by_path(self, path: str) -> VolumeInfo | None:
        for pool, directory in self.pools.items():
            try:
                if Path(path).parent == directory and Path(path).is_file():
                    return self.volume(pool, Path(path).name)
            except OSError:  # a name the file system refuses (too long): libvirt finds no such volume
                return None
        return None

    def delete_volume(self, pool: str, name: str) -> None:
        self._call("delete_volume")
        path = self._vol_path(pool, name)
        if not path.exists():
            raise NotFound(f"no storage vol with matching name '{name}'")
        path.unlink()

    # --- networks and host ---------------------------------------------------
    def list_networks(self) -> list[NetworkInfo]:
        self._call("list_networks")
        return [NetworkInfo(name, True, True, "nat", "", "") for name in sorted(self.networks)]

    def network_exists(self, name: str) -> bool:
        return name in self.networks

    def ensure_nat_network(self, name: str, bridge: str, cidr: str) -> bool:
        self._call("ensure_nat_network")
        if name in self.networks:
            return False
        self.networks.add(name)
        return True

    def bridge_exists(self, name: str) -> bool:
        return name in self.bridges

    def list_bridges(self) -> list[str]:
        self._call("list_bridges")
        return sorted(self.bridges)

    def capabilities(self) -> HostCapabilities:
        return HostCapabilities(arches={"x86_64": ("qemu", "kvm"), "i686": ("qemu", "kvm")}, kvm=True, host_arch="x86_64")

    def max_vcpus(self, arch: str, virt_type: str, machine: str = "q35") -> int:
        return self.max_vcpu

    def firmware_support(self, arch: str, virt_type: str, machine: str = "q35") -> FirmwareSupport:
        self._call("firmware_support")
        return self.firmware

    def host_resources(self) -> HostResources:
        self._call("host_resources")
        return self.host

    # --- domains -------------------------------------------------------------
    def list_domain_names(self) -> list[str]:
        return sorted(self.domains)

    def list_domains(self) -> list[DomainInfo]:
        self._call("list_domains")
        return [DomainInfo(name, parse_domain(d.xml).uuid, d.state, d.autostart, d.persistent) for name, d in sorted(self.domains.items())]

    def domain_exists(self, name: str) -> bool:
        return name in self.domains

    def disk_uses(self) -> list[DiskUse]:
        """Like the driver: every file of every domain's XML, volume sources by their path."""
        self._call("disk_uses")
        uses: set[DiskUse] = set()
        for name, domain in list(self.domains.items()):  # racing requests define domains meanwhile
            for file in parse_disk_files(domain.xml):
                path = file.path or (str(self.pools[file.pool] / file.volume) if file.pool in self.pools else "")
                if path:
                    uses.add(DiskUse(domain=name, path=path, readonly=file.readonly, backing=file.backing))
        return sorted(uses, key=lambda u: (u.domain, u.path, u.readonly, u.backing))

    def _domain(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise NotFound(f"Domain not found: no domain with matching name '{name}'")
        return self.domains[name]

    def define_domain(self, xml: str) -> str:
        self._call("define_domain")
        live = parse_domain(xml)
        if live.name in self.domains:
            raise Conflict(f"domain '{live.name}' already exists")
        self.domains[live.name] = FakeDomain(xml)
        return live.uuid

    def undefine_domain(self, name: str) -> None:
        self._call("undefine_domain")
        self.domains.pop(name, None)
        self.snapshots.pop(name, None)  # libvirt drops their metadata with the domain
        self.nvram.pop(name, None)
        self._hang_up_consoles(name)

    def start_domain(self, name: str) -> None:
        self._call("start_domain")
        domain = self._domain(name)
        if domain.state != "running":  # a (re)start: the counters begin again from 0
            domain.counters = zero_counters(name)
        domain.state = "running"  # like the driver: one already running is left as it is

    def destroy_domain(self, name: str) -> None:
        self._call("destroy_domain")
        if name in self.domains:
            self.domains[name].state = "shutoff"
            self._hang_up_consoles(name)

    def _hang_up_consoles(self, name: str) -> None:
        """Like QEMU exiting: the consoles' connections end."""
        for sock in self._console_sockets.pop(name, []):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for serial in self.serials.pop(name, []):
            serial.hangup()

    def open_graphics(self, name: str) -> socket.socket:
        self._call("open_graphics")
        info = self.console(name)
        if info.type != "vnc":
            raise Conflict(f"domain {name} has no VNC console ({info.type or 'no graphics'})", code="no_vnc")
        if self._domain(name).state != "running":
            raise Conflict(f"domain {name} is not running", code="not_running")
        ours, theirs = socket.socketpair()
        received = self.vnc_received.setdefault(name, bytearray())
        threading.Thread(target=_fake_vnc_server, args=(theirs, received), daemon=True).start()
        self._console_sockets.setdefault(name, []).append(theirs)
        return ours

    def open_serial(self, name: str, loop: asyncio.AbstractEventLoop) -> SerialChannel:
        self._call("open_serial")
        if self._domain(name).state != "running":
            raise Conflict(f"domain {name} is not running", code="not_running")
        serial = FakeSerial(loop)
        self.serials.setdefault(name, []).append(serial)
        return serial

    def shutdown_domain(self, name: str) -> None:
        self._call("shutdown_domain")
        self._domain(name).state = "shutoff"
        self._hang_up_consoles(name)

    def reboot_domain(self, name: str) -> None:
        self._call("reboot_domain")
        self._domain(name)

    def set_autostart(self, name: str, on: bool) -> None:
        self._call("set_autostart")
        self._domain(name).autostart = on

    def domain_autostart(self, name: str) -> bool:
        return self._domain(name).autostart

    def domain_state(self, name: str) -> str:
        return self._domain(name).state

    def domain_xml(self, name: str, inactive: bool = False) -> str:
        return self._domain(name).xml

    def console(self, name: str) -> ConsoleInfo:
        self._call("console")
        return parse_console(self._domain(name).xml)

    # --- hardware changes (vms/hypervisor/hardware.py) -----------------------
    # One document stands for both the live and the persistent definition.
    def set_memory(self, name: str, memory_mib: int, *, live: bool) -> None:
        self._call("set_memory")
        domain = self._domain(name)
        if memory_mib > read_hardware(domain.xml).max_memory_mib:
            raise InvalidInput("cannot set memory higher than max memory", field="memory")
        domain.xml = with_memory(domain.xml, memory_mib=memory_mib)

    def set_max_memory(self, name: str, max_memory_mib: int) -> None:
        self._call("set_max_memory")
        domain = self._domain(name)
        if domain.state == "running":
            raise Conflict("cannot resize the maximum memory on an active domain", field="max_memory")
        current = read_hardware(domain.xml).memory_mib
        domain.xml = with_memory(domain.xml, memory_mib=min(current, max_memory_mib), max_memory_mib=max_memory_mib)

    def set_vcpus(self, name: str, vcpus: int, *, live: bool) -> None:
        self._call("set_vcpus")
        domain = self._domain(name)
        if vcpus > read_hardware(domain.xml).max_vcpus:
            raise InvalidInput("requested vcpus is greater than max allowable vcpus", field="vcpus")
        domain.xml = with_vcpus(domain.xml, vcpus=vcpus)

    def set_max_vcpus(self, name: str, max_vcpus: int) -> None:
        self._call("set_max_vcpus")
        domain = self._domain(name)
        domain.xml = with_vcpus(domain.xml, max_vcpus=max_vcpus)

    def set_boot_order(self, name: str, devices: list[str]) -> None:
        self._call("set_boot_order")
        domain = self._domain(name)
        try:
            domain.xml = with_boot_order(domain.xml, devices)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="boot_order") from exc

    def attach_nic(self, name: str, nic: NicSpec, *, live: bool) -> None:
        self._call("attach_nic")
        domain = self._domain(name)
        domain.xml = with_interface(domain.xml, interface_xml(nic))

    def detach_nic(self, name: str, mac: str, *, live: bool) -> None:
        self._call("detach_nic")
        domain = self._domain(name)
        if interface_of(domain.xml, mac) is None:
            raise NotFound(f"domain '{name}' has no NIC {mac}", field="mac")
        domain.xml = without_interface(domain.xml, mac)

    # --- statistics (the graphs) --------------------------------------------
    def domain_stats(self) -> list[DomainStats]:
        """Like the driver's one bulk call: the counters of every running domain."""
        self._call("domain_stats")
        return [d.counters or zero_counters(name) for name, d in sorted(self.domains.items()) if d.state == "running"]

    def host_stats(self) -> HostStats:
        self._call("host_stats")
        return self.host_counters

    # --- guest addresses ------------------------------------------------------
    def domain_addresses(self, names: Collection[str] | None = None) -> list[DomainAddresses]:
        """Like the driver: one bulk read, each address once with its first source (lease, agent, arp)."""
        self._call("domain_addresses")
        result = []
        for name, d in sorted(self.domains.items()):
            if names is not None and name not in names:
                continue
            channel = "org.qemu.guest_agent.0" in d.xml
            running = d.state == "running"
            connected = running and channel and d.agent_connected
            order = {"lease": 0, "agent": 1, "arp": 2}
            seen: dict[tuple[str, str], GuestAddress] = {}
            for item in sorted(d.addresses if running else (), key=lambda a: order[a.source]):
                if item.source != "agent" or connected:
                    seen.setdefault((item.mac.lower(), item.address), dataclasses.replace(item, mac=item.mac.lower()))
            result.append(DomainAddresses(name, channel, connected, tuple(seen.values())))
        return result

    def advance(self, name: str, **added: int) -> DomainStats:
        """Add to a running domain's counters (e.g. `cpu_time_ns=30 * 10**9`); `memory_used_kib` and `vcpus` are set, not added."""
        domain = self._domain(name)
        current = domain.counters or zero_counters(name)
        set_only = ("memory_used_kib", "vcpus", "memory_kib")
        changes: dict[str, Any] = {k: v if k in set_only else getattr(current, k) + v for k, v in added.items()}
        domain.counters = dataclasses.replace(current, **changes)
        return domain.counters

    def advance_host(self, *, busy_ns: int, idle_ns: int, available_kib: int | None = None) -> None:
        c = self.host_counters
        self.host_counters = dataclasses.replace(
            c,
            cpu_busy_ns=c.cpu_busy_ns + busy_ns,
            cpu_total_ns=c.cpu_total_ns + busy_ns + idle_ns,
            memory_available_kib=c.memory_available_kib if available_kib is None else available_kib,
        )

    # --- snapshots -------------------------------------------------------------
    # A snapshot keeps the domain's state and the bytes of its disk files (the fake's volumes are small files).
    def list_snapshots(self, name: str) -> list[LiveSnapshot]:
        self._domain(name)
        return [taken for taken, _state, _files in self.snapshots.get(name, {}).values()]

    def create_snapshot(self, name: str, spec: SnapshotSpec) -> LiveSnapshot:
        self._call("create_snapshot")
        domain = self._domain(name)
        taken = self.snapshots.setdefault(name, {})
        if spec.name in taken:
            raise Conflict(f"operation failed: domain moment {spec.name} already exists")
        if domain.state == "running" and spec.memory == "no":
            raise Conflict("unsupported configuration: active qemu domains require external disk snapshots")
        files = {f.path: Path(f.path).read_bytes() for f in parse_disk_files(domain.xml) if not f.readonly and Path(f.path).is_file()}
        disks = tuple(SnapshotDisk(d.target_dev, d.snapshot, d.path, "") for d in spec.disks)
        live = LiveSnapshot(spec.name, spec.description, domain.state, "", 1, spec.memory, disks)
        taken[spec.name] = (live, domain.state, files)
        return live

    def revert_snapshot(self, name: str, snapshot: str) -> str:
        self._call("revert_snapshot")
        domain = self._domain(name)
        if snapshot not in self.snapshots.get(name, {}):
            raise NotFound(f"domain '{name}' has no snapshot '{snapshot}'", field="snapshot", code="snapshot_not_found")
        _live, state, files = self.snapshots[name][snapshot]
        for path, data in files.items():
            Path(path).write_bytes(data)
        domain.state = state
        return state

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        self._call("delete_snapshot")
        self._domain(name)
        self.snapshots.get(name, {}).pop(snapshot, None)

    def save_nvram(self, name: str, pool: str, volume: str) -> VolumeInfo | None:
        self._call("save_nvram")
        self._domain(name)
        if name not in self.nvram:
            return None
        path = self._vol_path(pool, volume)
        if path.exists():
            raise Conflict(f"storage volume '{volume}' exists already")
        path.write_bytes(self.nvram[name])
        return self.volume(pool, volume)

    def restore_nvram(self, name: str, pool: str, volume: str | None) -> None:
        self._call("restore_nvram")
        if self._domain(name).state == "running":
            raise Conflict(f"domain '{name}' is running: its UEFI variables are restored only while it is shut off", code="vm_running")
        if volume is None:
            self.nvram.pop(name, None)
        else:
            self.nvram[name] = self._vol_path(pool, volume).read_bytes()

    # --- device changes (day two: disks) -----------------------------------------
    def _edit_devices(self, name: str, edit: Any) -> None:
        domain = self._domain(name)
        root = etree.fromstring(domain.xml.encode())
        devices = root.find("devices")
        assert devices is not None
        edit(devices)
        domain.xml = etree.tostring(root, encoding="unicode")

    @staticmethod
    def _target(element: Any) -> str:
        target = element.find("target")
        return target.get("dev", "") if target is not None else ""

    def attach_device(self, name: str, xml: str, *, live: bool) -> None:
        self._call("attach_device")
        element = etree.fromstring(xml.encode())
        if live and self._domain(name).state != "running":
            raise Conflict("domain is not running")

        def edit(devices: Any) -> None:
            if element.tag == "disk" and any(self._target(d) == self._target(element) for d in devices.iterfind("disk")):
                raise Conflict(f"target {self._target(element)} already exists")
            devices.append(element)

        self._edit_devices(name, edit)
        self.device_changes.append(("attach", name, self._target(element), live))

    def detach_device(self, name: str, xml: str, *, live: bool, target_dev: str = "") -> None:
        self._call("detach_device")
        target = self._target(etree.fromstring(xml.encode()))

        def edit(devices: Any) -> None:
            found = [d for d in devices.iterfind("disk") if self._target(d) == target]
            if not found:
                raise NotFound(f"no disk {target}")
            devices.remove(found[0])

        self._edit_devices(name, edit)
        self.device_changes.append(("detach", name, target, live))

    def update_device(self, name: str, xml: str, *, live: bool) -> None:
        self._call("update_device")
        element = etree.fromstring(xml.encode())
        target = self._target(element)

        def edit(devices: Any) -> None:
            found = [d for d in devices.iterfind("disk") if self._target(d) == target]
            if not found:
                raise NotFound(f"no disk {target}")
            devices.replace(found[0], element)

        self._edit_devices(name, edit)
        self.device_changes.append(("update", name, target, live))

    def block_resize(self, name: str, target_dev: str, size_bytes: int) -> None:
        self._call("block_resize")
        if self._domain(name).state != "running":
            raise Conflict("domain is not running")
        self.resized[target_dev] = size_bytes

    def resize_volume_path(self, path: str, size_bytes: int) -> None:
        self._call("resize_volume_path")
        if not Path(path).exists():
            raise NotFound(f"no storage vol with matching path '{path}'")
        self.resized[path] = size_bytes

    def snapshot_names(self, name: str) -> list[str]:
        self._domain(name)
        return sorted(self.snapshots.get(name, {}))  # the names libvirt lists (those the snapshots service took too)

    # --- several hosts: live migration ---------------------------------------
    def migrate_domain(
        self,
        name: str,
        dest_uri: str,
        *,
        copy_storage: bool,
        dest_address: str | None = None,
        timeout_s: float | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> None:
        """Like the driver: the running domain moves to the peer at `dest_uri` (defined there, gone here).

        The checks libvirt makes before it touches the guest: the destination
        answers, has no domain of that name, and (copy_storage) has a pool in
        the directory of each writable disk file, or (shared storage) can see
        every such file. A refused migration leaves the domain here, running.
        """
        self._call("migrate_domain")
        domain = self._domain(name)
        if domain.state != "running":
            raise Conflict(f"cannot migrate {name}: domain is not running", field="name")
        dest = self.peers.get(dest_uri)
        if dest is None:
            raise ServiceUnavailable(f"the migration of {name} to {dest_uri} failed: unable to connect to server")
        dest._call("accept_migration")
        if name in dest.domains:
            raise Conflict(f"cannot migrate {name}: domain '{name}' already exists on {dest_uri}", field="name")
        files = [f for f in parse_disk_files(domain.xml) if not f.readonly and not f.backing]
        paths = [Path(f.path or (self.pools[f.pool] / f.volume if f.pool in self.pools else "")) for f in files]
        for path in paths:
            if copy_storage and path.parent not in dest.pools.values():
                why = f"no storage pool with matching target path '{path.parent}'"
            elif not copy_storage and not path.exists():
                why = f"{path} is not shared with the destination"
            else:
                continue
            raise Conflict(f"cannot migrate {name} to {dest_uri}: {why}", code="destination_storage")
        if progress is not None:
            moved = (domain.counters.memory_kib * 1024 if domain.counters else 0) + sum(p.stat().st_size for p in paths if p.exists())
            progress(JobProgress("migration_out", elapsed_ms=0, total_bytes=moved, processed_bytes=moved, remaining_bytes=0))
        dest.domains[name] = self.domains.pop(name)
        if name in self.nvram:  # QEMU carries the variables; libvirt leaves the source's file behind
            dest.nvram[name] = self.nvram[name]
        self.snapshots.pop(name, None)
        self._hang_up_consoles(name)

    def domain_job(self, name: str) -> JobProgress | None:
        self._domain(name)
        return self.jobs.get(name)

    def abort_migration(self, name: str) -> None:
        self._call("abort_migration")
        self._domain(name)
        if self.jobs.pop(name, None) is None:
            raise Conflict(f"no job runs on {name}", code="no_job")

    def nvram_path(self, name: str) -> str:
        self._call("nvram_path")
        return parse_nvram_path(self._domain(name).xml, NVRAM_DIR)

    def tpm_state_path(self, name: str) -> str:
        self._call("tpm_state_path")
        return parse_tpm_state_path(self._domain(name).xml)

    def _nvram_owner(self, path: str) -> str | None:
        """The domain whose variables `nvram` holds at `path` (libvirt's own file name in its directory)."""
        return next((name for name in self.nvram if path == f"{NVRAM_DIR}/{name}_VARS.fd"), None)

    def host_file_exists(self, path: str) -> bool:
        self._call("host_file_exists")
        return self._nvram_owner(path) is not None or path in self.host_files

    def delete_host_file(self, path: str) -> bool:
        self._call("delete_host_file")
        owner = self._nvram_owner(path)
        if owner is None:
            return False
        del self.nvram[owner]
        return True

    def close(self) -> None:
        self._call("close")


@dataclass
class FakeHosts:
    """Several fake hosts, one in-memory hypervisor per libvirt URI (issue 15).

    Install with `monkeypatch.setattr("vms.hypervisor.get_hypervisor", hosts.get)`. The default host's
    URI (VAPOR_LIBVIRT_URI, or "" for it) gets `default`; `add(uri)` makes another; `down(uri)` makes
    every call to that host fail as a dead libvirtd's would (ServiceUnavailable) until `up(uri)`.
    `asked` counts the connections asked for, per URI.
    """

    pool_root: Path
    default: FakeHypervisor | None = None
    by_uri: dict[str, FakeHypervisor] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    asked: Counter[str] = field(default_factory=Counter)

    def _key(self, uri: str | None) -> str:
        from django.conf import settings

        return uri or settings.VAPOR.libvirt_uri

    def add(self, uri: str, **fields: object) -> FakeHypervisor:
        pool_dir = self.pool_root / f"host-{len(self.by_uri)}"
        pool_dir.mkdir(parents=True, exist_ok=True)
        fake = FakeHypervisor(pool_dir=pool_dir, **fields)  # type: ignore[arg-type]
        self.by_uri[uri] = fake
        return fake

    def get(self, uri: str | None = None) -> FakeHypervisor:
        key = self._key(uri)
        self.asked[key] += 1
        if key in self.dead:
            raise ServiceUnavailable(f"cannot connect to {key}: Connection refused (host unavailable)")
        if key not in self.by_uri:
            if self.default is None:
                self.default = self.add(key)
            else:
                self.by_uri[key] = self.default
        return self.by_uri[key]

    def down(self, uri: str) -> None:
        self.dead.add(uri)

    def up(self, uri: str) -> None:
        self.dead.discard(uri)
