"""The libvirt implementation of `vms.hypervisor.Hypervisor`.

The only module in Vapor that imports `libvirt`. Every call into the bindings
goes through `_calls()`, which turns `libvirtError` into Vapor's errors, so
nothing above this module ever sees a libvirt exception or error code.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

import libvirt
from django.conf import settings

from vaporsite.errors import HypervisorError, InvalidInput, VaporError
from vms.hypervisor import NetworkInfo, PoolInfo, VolumeInfo
from vms.hypervisor import xml as lvxml
from vms.hypervisor.errors import (
    VIR_ERR_NO_NETWORK,
    VIR_ERR_NO_STORAGE_POOL,
    from_libvirt,
    validate_bridge_name,
    validate_name,
    validate_volume_name,
)

logger = logging.getLogger("vapor.hypervisor")


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

    @staticmethod
    def _undo(step: Any) -> None:
        """Roll back a definition we just made; the original error is what matters."""
        try:
            step()
        except (libvirt.libvirtError, VaporError) as exc:
            logger.warning("could not roll back a definition: %s", exc)
