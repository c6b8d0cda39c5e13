"""The libvirt implementation of `vms.hypervisor.Hypervisor`.

The only module in Vapor that imports `libvirt`. Every call into the bindings
goes through `_calls()`, which turns `libvirtError` into Vapor's errors, so
nothing above this module ever sees a libvirt exception or error code.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import libvirt
from django.conf import settings

from vaporsite.errors import Conflict, HypervisorError, InvalidInput, NotFound, VaporError
from vms.hypervisor import DOMAIN_STATES, HostCapabilities, NetworkInfo, PoolInfo, VolumeInfo, images
from vms.hypervisor import xml as lvxml
from vms.hypervisor.errors import (
    VIR_ERR_CONFIG_UNSUPPORTED,
    VIR_ERR_INTERNAL_ERROR,
    VIR_ERR_INVALID_ARG,
    VIR_ERR_NO_DOMAIN,
    VIR_ERR_NO_INTERFACE,
    VIR_ERR_NO_NETWORK,
    VIR_ERR_NO_STORAGE_POOL,
    VIR_ERR_NO_STORAGE_VOL,
    VIR_ERR_NO_SUPPORT,
    VIR_ERR_OPERATION_INVALID,
    from_libvirt,
    validate_bridge_name,
    validate_name,
    validate_volume_name,
)

logger = logging.getLogger("vapor.hypervisor")

# Undefine removes everything libvirt keeps beside the definition: NVRAM
# (UEFI variables), swtpm state, a managed-save image, snapshot and
# checkpoint metadata. Left behind, the NVRAM and TPM files would be picked up
# by the next domain of the same name (NVRAM) or linger forever (TPM, by UUID).
_UNDEFINE_ALL = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_TPM
)
# Drivers that reject some flags (libvirt < 8.9 has no TPM flag; the test
# driver takes none): retry with fewer. A driver without NVRAM support has no
# NVRAM to leave behind, and one that has it refuses the plain undefine.
_UNDEFINE_FALLBACKS = (_UNDEFINE_ALL, _UNDEFINE_ALL & ~libvirt.VIR_DOMAIN_UNDEFINE_TPM, 0)
# Pool types whose target path is a directory of image files; the others
# (logical, disk, iscsi ...) name a /dev path, which must never become an
# allowed root for disk files.
_FILE_POOL_TYPES = frozenset({"dir", "fs", "netfs"})


def _quiet(_ctx: object, _error: object) -> None:
    """libvirt's default handler prints every error to stderr, including the
    "not found" answers the driver expects and handles; errors still raise."""


libvirt.registerErrorHandler(_quiet, None)


@contextmanager
def _calls(field: str | None = None) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc.get_error_code() or 0, exc.get_error_message() or str(exc), field=field) from exc


def _lookup_or_none(lookup: Any, name: str, missing_code: int) -> Any:
    """`lookup(name)`, or None when libvirt says there is no such object."""
    try:
        return lookup(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == missing_code:
            return None
        raise from_libvirt(exc.get_error_code() or 0, exc.get_error_message() or str(exc)) from exc


class LibvirtDriver:
    """A connection to one libvirt host, opened on first use.

    One instance may be shared by threads: libvirt connections are
    thread-safe, and opening is serialized so a burst of first calls opens
    one connection. A connection that died (daemon restarted) is reopened.
    """

    def __init__(self, uri: str | None = None) -> None:
        self._uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # The host's capabilities do not change while a daemon runs; asking
        # costs a round trip (and a QEMU probe after a restart) per request.
        self._capabilities: HostCapabilities | None = None
        self._max_vcpus: dict[tuple[str, str, str], int] = {}

    @property
    def uri(self) -> str:
        # Read at call time: tests swap settings.VAPOR after import.
        return self._uri or settings.VAPOR.libvirt_uri

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                self._discard(conn)
            uri = self.uri
            try:
                self._conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot connect to {uri}: {exc.get_error_message() or exc}") from exc
            return self._conn

    @staticmethod
    def _discard(conn: libvirt.virConnect) -> None:
        # A dead connection may fail to close; there is nothing left to release.
        with suppress(libvirt.libvirtError):
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._discard(self._conn)
                self._conn = None

    def __enter__(self) -> LibvirtDriver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # Storage pools

    def list_pools(self) -> list[PoolInfo]:
        with _calls():
            return sorted((self._pool_info(p) for p in self._connection().listAllStoragePools(0)), key=lambda p: p.name)

    def pool(self, name: str) -> PoolInfo:
        return self._pool_info(self._lookup_pool(name))

    def ensure_dir_pool(self, name: str, path: str) -> bool:
        """Make sure a directory pool `name` exists, is active and autostarts.

        Returns True when it had to be defined. An existing pool is kept as it
        is (whatever its type or path) and only started and marked autostart:
        it may hold someone's disks.
        """
        validate_name(name, field="pool", what="pool")
        if not os.path.isabs(path):
            raise InvalidInput(f"pool path {path!r} must be absolute", field="path")
        conn = self._connection()
        pool = _lookup_or_none(conn.storagePoolLookupByName, name, VIR_ERR_NO_STORAGE_POOL)
        created = pool is None
        with _calls(field="pool"):
            if pool is None:
                pool = conn.storagePoolDefineXML(lvxml.dir_pool_xml(name, path), 0)
            try:
                if not pool.isActive():
                    # Build only dir pools: for a disk or LVM pool, "build"
                    # writes a label or a volume group onto a device.
                    if lvxml.pool_type(pool.XMLDesc(0)) == "dir":
                        pool.build(0)
                    pool.create(0)
                if not pool.autostart():
                    pool.setAutostart(1)
            except libvirt.libvirtError:
                if created:
                    self._undo(pool.undefine)
                raise
        return created

    def _lookup_pool(self, name: str) -> Any:
        with _calls(field="pool"):
            return self._connection().storagePoolLookupByName(name)

    @staticmethod
    def _pool_info(pool: Any) -> PoolInfo:
        with _calls():
            _state, capacity, allocation, available = pool.info()
            return PoolInfo(
                name=pool.name(),
                active=bool(pool.isActive()),
                autostart=bool(pool.autostart()),
                path=lvxml.pool_target_path(pool.XMLDesc(0)),
                capacity=capacity,
                allocation=allocation,
                available=available,
            )

    # Volumes

    def create_volume(self, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo:
        """A new thin volume; Conflict if the name (or its file) is taken."""
        validate_volume_name(name)
        document = lvxml.volume_xml(name, capacity_bytes, fmt)
        target = self._lookup_pool(pool)
        with _calls(field="name"):
            return self._volume_info(target.createXML(document, 0))

    def volume(self, pool: str, name: str) -> VolumeInfo:
        return self._volume_info(self._lookup_volume(pool, name))

    def delete_volume(self, pool: str, name: str) -> None:
        volume = self._lookup_volume(pool, name)
        with _calls(field="name"):
            volume.delete(0)

    def _lookup_volume(self, pool: str, name: str) -> Any:
        validate_volume_name(name)
        target = self._lookup_pool(pool)
        with _calls(field="name"):
            return target.storageVolLookupByName(name)

    @staticmethod
    def _volume_info(volume: Any) -> VolumeInfo:
        with _calls():
            _type, capacity, allocation = volume.info()
            return VolumeInfo(
                name=volume.name(),
                path=volume.path(),
                capacity=capacity,
                allocation=allocation,
                format=lvxml.volume_format(volume.XMLDesc(0)),
            )

    # Networks

    def list_networks(self) -> list[NetworkInfo]:
        with _calls():
            return sorted((self._network_info(n) for n in self._connection().listAllNetworks(0)), key=lambda n: n.name)

    def network_exists(self, name: str) -> bool:
        conn = self._connection()
        return _lookup_or_none(conn.networkLookupByName, name, VIR_ERR_NO_NETWORK) is not None

    def ensure_nat_network(self, name: str, bridge: str, cidr: str) -> bool:
        """Make sure a network `name` exists, is active and autostarts.

        Returns True when it had to be defined (as NAT on `bridge` with DHCP
        over `cidr`). An existing network is kept as it is, like pools.
        """
        validate_name(name, field="network", what="network")
        validate_bridge_name(bridge)
        document = lvxml.nat_network_xml(name, bridge, cidr)
        conn = self._connection()
        network = _lookup_or_none(conn.networkLookupByName, name, VIR_ERR_NO_NETWORK)
        created = network is None
        with _calls(field="network"):
            if network is None:
                network = conn.networkDefineXML(document)
            try:
                if not network.isActive():
                    network.create()
                if not network.autostart():
                    network.setAutostart(1)
            except libvirt.libvirtError:
                if created:
                    self._undo(network.undefine)
                raise
        return created

    @staticmethod
    def _network_info(network: Any) -> NetworkInfo:
        with _calls():
            shape = lvxml.network_shape(network.XMLDesc(0))
            return NetworkInfo(
                name=network.name(),
                active=bool(network.isActive()),
                autostart=bool(network.autostart()),
                forward_mode=shape.forward_mode,
                bridge=shape.bridge,
                cidr=shape.cidr,
            )

    # Host

    def capabilities(self) -> HostCapabilities:
        """Architectures and domain types the host offers (cached for this driver's life)."""
        if self._capabilities is None:
            with _calls():
                document = self._connection().getCapabilities()
            self._capabilities = lvxml.host_capabilities(document)
        return self._capabilities

    def max_vcpus(self, arch: str, virt_type: str, machine: str = "q35") -> int:
        """The most vCPUs one domain may have: QEMU's limit for the machine type, not the host's cores.

        Overcommit is normal (a 2-core host runs 8-vCPU guests). The domain
        capabilities know the machine type's limit; a driver without them
        (the test driver) answers `getMaxVcpus` for the domain type.
        """
        key = (arch, virt_type, machine)
        if key not in self._max_vcpus:
            conn = self._connection()
            try:
                limit = lvxml.max_vcpus(conn.getDomainCapabilities(None, arch, machine, virt_type, 0))
            except libvirt.libvirtError as exc:
                code, words = exc.get_error_code() or 0, exc.get_error_message() or str(exc)
                if code in (VIR_ERR_INVALID_ARG, VIR_ERR_CONFIG_UNSUPPORTED):
                    message = f"no {virt_type} domain of arch {arch}, machine {machine} here: {words}"
                    raise InvalidInput(message, field="architecture") from exc
                if code != VIR_ERR_NO_SUPPORT:
                    raise from_libvirt(code, words) from exc
                limit = None
            if limit is None:
                with _calls():
                    limit = conn.getMaxVcpus(virt_type)
            self._max_vcpus[key] = limit
        return self._max_vcpus[key]

    def bridge_exists(self, name: str) -> bool:
        """True when a Linux bridge `name` exists where libvirtd runs.

        Asked through libvirt's interface driver, because libvirtd may live in
        another network namespace (scripts/libvirtd.sh) where Vapor's own
        /sys shows other interfaces. Its udev backend reads sysfs and works
        without udevd. Only when a daemon has no interface driver does this
        fall back to /sys/class/net on Vapor's host, which is the right place
        only when both share a namespace.
        """
        validate_bridge_name(name)
        conn = self._connection()
        try:
            document = conn.interfaceLookupByName(name).XMLDesc(0)
        except libvirt.libvirtError as exc:
            code = exc.get_error_code()
            if code == VIR_ERR_NO_INTERFACE:
                return False
            if code != VIR_ERR_NO_SUPPORT:
                raise from_libvirt(code or 0, exc.get_error_message() or str(exc), field="bridge") from exc
            return os.path.isdir(f"/sys/class/net/{name}/bridge")
        return lvxml.interface_type(document) == "bridge"

    # Storage seen as files

    def pool_paths(self) -> dict[str, str]:
        """Pool name -> directory, for the pools that keep volumes as files (the allowed disk roots)."""
        paths: dict[str, str] = {}
        with _calls():
            for pool in self._connection().listAllStoragePools(0):
                document = pool.XMLDesc(0)
                path = lvxml.pool_target_path(document)
                if path and lvxml.pool_type(document) in _FILE_POOL_TYPES:
                    paths[pool.name()] = path
        return paths

    def volume_by_path(self, path: str) -> VolumeInfo | None:
        """The volume of an active pool whose file is exactly `path` (no symlink resolution), else None.

        For a file libvirt did not create, `format` is libvirt's *probe* of
        its content: fine to show, never a format to open the file with.
        """
        volume = self._volume_at(path)
        return None if volume is None else self._volume_info(volume)

    def _volume_at(self, path: str) -> Any:
        return _lookup_or_none(self._connection().storageVolLookupByPath, path, VIR_ERR_NO_STORAGE_VOL)

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
        """A new volume `name` in `pool` holding `source_path`'s disk; the source is never written.

        linked: a qcow2 overlay with the source as backing file (new writes
        go to the overlay). Otherwise a full copy: libvirt copies a source
        that is a volume of one of its pools in the stated format
        (`createXMLFrom`); any other file is copied by `qemu-img convert -n`
        with explicit formats into a volume libvirt created empty, so the
        pool knows the volume either way. Checking the source's backing chain
        against the allowed roots is the caller's job (it knows the roots);
        this only reads it with explicit formats. The capacity is the
        source's virtual size, or `capacity_bytes` when that is larger.
        Conflict when the name is taken; a half-made copy is deleted.
        """
        validate_volume_name(name)
        source = self._clone_source(source_path)
        size = images.image_info(source, source_format, field="clone_from").virtual_size
        capacity = max(size, capacity_bytes or 0)
        backing = {"backing_path": source, "backing_format": source_format} if linked else {}
        document = lvxml.clone_volume_xml(name, capacity, fmt, **backing)
        target = self._lookup_pool(pool)
        with _calls(field="name"):
            if name in target.listVolumes():
                raise Conflict(f"storage volume '{name}' exists already in pool '{pool}'", field="name")
            if linked:
                return self._volume_info(target.createXML(document, 0))
            origin = self._volume_at(source)
            # libvirt copies with the format it *probed* for a file it did not
            # create: a "raw" upload holding a qcow2 header would be copied as
            # qcow2, pulling its backing file (any host file) into the copy.
            # It may copy only when its format is the one the caller states.
            if origin is not None and lvxml.volume_format(origin.XMLDesc(0)) == source_format:
                volume = self._create_from(target, document, origin, name)
                # createXMLFrom keeps the source's size whatever the XML asks.
                if volume.info()[1] < capacity:
                    self._or_delete(volume, lambda: volume.resize(capacity, 0))
            else:
                volume = target.createXML(document, 0)
                self._or_delete(volume, lambda: images.convert_image(source, source_format, volume.path(), fmt))
                # Let the pool see what qemu-img wrote (allocation).
                target.refresh(0)
                volume = target.storageVolLookupByName(name)
            return self._volume_info(volume)

    @staticmethod
    def _clone_source(path: str) -> str:
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise InvalidInput(f"{path!r} is not an absolute path", field="clone_from")
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist", field="clone_from") from None
        if not stat.S_ISREG(mode):
            raise InvalidInput(f"{path} is not a regular file", field="clone_from")
        return path

    @staticmethod
    def _create_from(target: Any, document: str, origin: Any, name: str) -> Any:
        try:
            return target.createXMLFrom(document, origin, 0)
        except libvirt.libvirtError as exc:
            # A concurrent clone took the name between our check and here;
            # createXMLFrom says so with an internal error, not a conflict code.
            if exc.get_error_code() == VIR_ERR_INTERNAL_ERROR and "already in use" in (exc.get_error_message() or ""):
                raise Conflict(exc.get_error_message() or f"volume {name} exists", field="name") from exc
            raise

    @staticmethod
    def _or_delete(volume: Any, step: Any) -> None:
        """Run `step`; if it fails, delete the volume it was filling, then re-raise."""
        try:
            step()
        except (libvirt.libvirtError, VaporError):
            with suppress(libvirt.libvirtError):
                volume.delete(0)
            raise

    # Domains

    def domain_exists(self, name: str) -> bool:
        return _lookup_or_none(self._connection().lookupByName, name, VIR_ERR_NO_DOMAIN) is not None

    def define_domain(self, xml: str) -> str:
        """Define (not start) a persistent domain and return its UUID.

        libvirt's define *replaces* a domain with the same name and UUID, so
        an existing name is a Conflict checked first; a domain defined by a
        racing caller in between is refused by libvirt (a different UUID) and
        mapped to Conflict too. The XML is validated against libvirt's schema.
        """
        name = lvxml.domain_name(xml)
        if not name:
            raise InvalidInput("the domain XML has no name", field="name")
        if self.domain_exists(name):
            raise Conflict(f"a domain named '{name}' already exists on the host", field="name")
        with _calls(field="name"):
            return self._connection().defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE).UUIDString()

    def undefine_domain(self, name: str) -> None:
        """Stop and forget a domain with its NVRAM and TPM state; a missing domain is fine."""
        domain = _lookup_or_none(self._connection().lookupByName, name, VIR_ERR_NO_DOMAIN)
        if domain is None:
            return
        self._destroy(domain)
        for flags in _UNDEFINE_FALLBACKS:
            try:
                domain.undefineFlags(flags)
                return
            except libvirt.libvirtError as exc:
                code, words = exc.get_error_code(), exc.get_error_message() or str(exc)
                if code == VIR_ERR_NO_DOMAIN:
                    return
                if not (code == VIR_ERR_INVALID_ARG and "flags" in words and flags):
                    raise from_libvirt(code or 0, words, field="name") from exc

    def start_domain(self, name: str) -> None:
        """Start a defined domain; one already running is left as it is (a task may run twice)."""
        domain = self._lookup_domain(name)
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            if not (exc.get_error_code() == VIR_ERR_OPERATION_INVALID and domain.isActive()):
                raise from_libvirt(exc.get_error_code() or 0, exc.get_error_message() or str(exc), field="name") from exc

    def destroy_domain(self, name: str) -> None:
        """Pull the plug; a domain that is not running is left as it is."""
        self._destroy(self._lookup_domain(name))

    def shutdown_domain(self, name: str) -> None:
        """Ask the guest to power off (ACPI); Conflict when it is not running."""
        self._lifecycle(name, "shutdown")

    def reboot_domain(self, name: str) -> None:
        """Ask the guest to reboot; Conflict when it is not running."""
        self._lifecycle(name, "reboot")

    def set_autostart(self, name: str, on: bool) -> None:
        domain = self._lookup_domain(name)
        with _calls(field="name"):
            domain.setAutostart(1 if on else 0)

    def domain_autostart(self, name: str) -> bool:
        domain = self._lookup_domain(name)
        with _calls(field="name"):
            return bool(domain.autostart())

    def domain_state(self, name: str) -> str:
        """The state in words: running, shutoff, paused, crashed, pmsuspended, blocked, shutdown or nostate."""
        domain = self._lookup_domain(name)
        with _calls(field="name"):
            state, _reason = domain.state(0)
        return DOMAIN_STATES[state] if 0 <= state < len(DOMAIN_STATES) else "nostate"

    def domain_xml(self, name: str, inactive: bool = False) -> str:
        """The live (or, `inactive`, the next-boot) definition.

        Never with VIR_DOMAIN_XML_SECURE: without it libvirt leaves graphics
        passwords out, so the XML can be logged and shown.
        """
        domain = self._lookup_domain(name)
        with _calls(field="name"):
            return domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)

    def list_domain_names(self) -> list[str]:
        with _calls():
            return sorted(domain.name() for domain in self._connection().listAllDomains(0))

    def _lookup_domain(self, name: str) -> Any:
        with _calls(field="name"):
            return self._connection().lookupByName(name)

    @staticmethod
    def _destroy(domain: Any) -> None:
        try:
            if domain.isActive():
                domain.destroy()
        except libvirt.libvirtError as exc:
            # It stopped (or vanished) between the check and the destroy.
            if exc.get_error_code() not in (VIR_ERR_OPERATION_INVALID, VIR_ERR_NO_DOMAIN):
                raise from_libvirt(exc.get_error_code() or 0, exc.get_error_message() or str(exc), field="name") from exc

    def _lifecycle(self, name: str, action: str) -> None:
        domain = self._lookup_domain(name)
        try:
            getattr(domain, action)()
        except libvirt.libvirtError as exc:
            words = exc.get_error_message() or str(exc)
            if exc.get_error_code() == VIR_ERR_OPERATION_INVALID:
                raise Conflict(f"cannot {action} domain '{name}': {words}", field="name") from exc
            raise from_libvirt(exc.get_error_code() or 0, words, field="name") from exc

    @staticmethod
    def _undo(step: Any) -> None:
        """Roll back a definition we just made; the original error is what matters."""
        try:
            step()
        except (libvirt.libvirtError, VaporError) as exc:
            logger.warning("could not roll back a definition: %s", exc)
