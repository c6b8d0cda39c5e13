"""Storage pools, volumes and clones: the storage half of `LibvirtDriver`.

A mixin over `Connection`, so the driver stays one object with one
connection while each concern lives in a file of readable size.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import libvirt

from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError
from vaporsite.paths import absolute_path
from vms.hypervisor import PoolInfo, VolumeInfo, images
from vms.hypervisor._connection import Connection, calls, lookup_or_none, undefined_on_failure
from vms.hypervisor.documents.pool import dir_pool_xml, pool_target_path, pool_type
from vms.hypervisor.documents.volume import clone_volume_xml, volume_format, volume_xml
from vms.hypervisor.errors import (
    VIR_ERR_INTERNAL_ERROR,
    VIR_ERR_NO_STORAGE_POOL,
    VIR_ERR_NO_STORAGE_VOL,
    validate_name,
    validate_volume_name,
)
from vms.hypervisor.uris import files_are_local

# Pool types whose target path is a directory of image files; the others
# (logical, disk, iscsi ...) name a /dev path, which must never become an
# allowed root for disk files.
_FILE_POOL_TYPES = frozenset({"dir", "fs", "netfs"})


def volume_owner() -> tuple[int, int] | None:
    """Who a new volume's file belongs to: this process's user when it is not root (run.sh's `vapor`).

    libvirtd (root) creates the file; Vapor itself then reads it with
    qemu-img (the chain checks, a later clone of it) and writes it (a copy
    made by `qemu-img convert`), which a root-owned 0600 file would refuse.
    While a guest runs, libvirt lends the file to QEMU and gives it back.
    """
    uid = os.geteuid()
    return None if uid == 0 else (uid, os.getegid())


class StorageMixin(Connection):
    """Pools, volumes, and volumes seen as files (allowed roots, clones)."""

    # Storage pools

    def list_pools(self) -> list[PoolInfo]:
        with calls():
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
        pool = lookup_or_none(conn.storagePoolLookupByName, name, VIR_ERR_NO_STORAGE_POOL)
        created = pool is None
        with calls(field="pool"):
            if pool is None:
                pool = conn.storagePoolDefineXML(dir_pool_xml(name, path), 0)
            with undefined_on_failure(pool, created):
                if not pool.isActive():
                    # Build only dir pools: for a disk or LVM pool, "build"
                    # writes a label or a volume group onto a device.
                    if pool_type(pool.XMLDesc(0)) == "dir":
                        pool.build(0)
                    pool.create(0)
                if not pool.autostart():
                    pool.setAutostart(1)
        return created

    def _lookup_pool(self, name: str) -> Any:
        with calls(field="pool"):
            return self._connection().storagePoolLookupByName(name)

    @staticmethod
    def _pool_info(pool: Any) -> PoolInfo:
        with calls():
            _state, capacity, allocation, available = pool.info()
            document = pool.XMLDesc(0)
            return PoolInfo(
                name=pool.name(),
                active=bool(pool.isActive()),
                autostart=bool(pool.autostart()),
                path=pool_target_path(document),
                capacity=capacity,
                allocation=allocation,
                available=available,
                type=pool_type(document),
            )

    # Volumes

    def create_volume(self, pool: str, name: str, capacity_bytes: int, fmt: str = "qcow2") -> VolumeInfo:
        """A new thin volume; Conflict if the name (or its file) is taken."""
        validate_volume_name(name)
        document = volume_xml(name, capacity_bytes, fmt, owner=volume_owner())
        target = self._lookup_pool(pool)
        with calls(field="name"):
            return self._volume_info(target.createXML(document, 0))

    def volume(self, pool: str, name: str) -> VolumeInfo:
        return self._volume_info(self._lookup_volume(pool, name))

    def delete_volume(self, pool: str, name: str) -> None:
        volume = self._lookup_volume(pool, name)
        with calls(field="name"):
            volume.delete(0)

    def _lookup_volume(self, pool: str, name: str) -> Any:
        validate_volume_name(name)
        target = self._lookup_pool(pool)
        with calls(field="name"):
            return target.storageVolLookupByName(name)

    @staticmethod
    def _volume_info(volume: Any) -> VolumeInfo:
        with calls():
            _type, capacity, allocation = volume.info()
            return VolumeInfo(
                name=volume.name(),
                path=volume.path(),
                capacity=capacity,
                allocation=allocation,
                format=volume_format(volume.XMLDesc(0)),
            )

    # Storage seen as files

    def pool_paths(self) -> dict[str, str]:
        """Pool name -> directory, for the pools that keep volumes as files (the allowed disk roots)."""
        paths: dict[str, str] = {}
        with calls():
            for pool in self._connection().listAllStoragePools(0):
                document = pool.XMLDesc(0)
                path = pool_target_path(document)
                if path and pool_type(document) in _FILE_POOL_TYPES:
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
        return lookup_or_none(self._connection().storageVolLookupByPath, path, VIR_ERR_NO_STORAGE_VOL)

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
        if not files_are_local(self.uri):
            return self._clone_on_remote(pool, name, source_path, source_format, linked=linked, fmt=fmt, capacity_bytes=capacity_bytes)
        source = self._clone_source(source_path)
        size = images.image_info(source, source_format, field="clone_from").virtual_size
        capacity = max(size, capacity_bytes or 0)
        backing = {"backing_path": source, "backing_format": source_format} if linked else {}
        document = clone_volume_xml(name, capacity, fmt, owner=volume_owner(), **backing)
        target = self._lookup_pool(pool)
        with calls(field="name"):
            if name in target.listVolumes():
                raise Conflict(f"storage volume '{name}' exists already in pool '{pool}'", field="name")
            if linked:
                return self._volume_info(target.createXML(document, 0))
            origin = self._volume_at(source)
            # libvirt copies with the format it *probed* for a file it did not
            # create: a "raw" upload holding a qcow2 header would be copied as
            # qcow2, pulling its backing file (any host file) into the copy.
            # It may copy only when its format is the one the caller states.
            if origin is not None and volume_format(origin.XMLDesc(0)) == source_format:
                volume = self._create_from(target, document, origin, name)
                # createXMLFrom keeps the source's size whatever the XML asks.
                if volume.info()[1] < capacity:
                    self._or_delete(volume, lambda: volume.resize(capacity, 0))
            else:
                volume = target.createXML(document, 0)
                # The volume was created empty just above: qemu-img need not write the source's empty parts as zeros.
                self._or_delete(volume, lambda: images.convert_image(source, source_format, volume.path(), fmt, dest_is_new=True))
                # Let the pool see what qemu-img wrote (allocation).
                target.refresh(0)
                volume = target.storageVolLookupByName(name)
            return self._volume_info(volume)

    def _clone_on_remote(
        self, pool: str, name: str, source_path: str, source_format: str, *, linked: bool, fmt: str, capacity_bytes: int | None
    ) -> VolumeInfo:
        """`clone_volume` on a host whose files are not this machine's: everything is done by the host's libvirt.

        The source must be a volume of one of its pools (checked by the caller through the storage API,
        `vms.services.remote_images`). Its size: the virtual size libvirt reads when its format is the
        stated one, else (a raw file whose first bytes look like something else) the file's size. A full
        copy is libvirt's `createXMLFrom`, which copies what it reads: only when it reads the source in the
        stated format (else InvalidInput; a linked clone states the format itself and is always possible).
        """
        origin = self._volume_at(source_path)
        if origin is None:
            raise NotFound(f"{source_path} is no volume of a storage pool on the host", field="clone_from")
        with calls(field="clone_from"):
            probed = volume_format(origin.XMLDesc(0))
            size = origin.info()[1] if probed == source_format else origin.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
        capacity = max(size, capacity_bytes or 0)
        backing = {"backing_path": source_path, "backing_format": source_format} if linked else {}
        document = clone_volume_xml(name, capacity, fmt, owner=None, **backing)
        target = self._lookup_pool(pool)
        with calls(field="name"):
            if name in target.listVolumes():
                raise Conflict(f"storage volume '{name}' exists already in pool '{pool}'", field="name")
            if linked:
                return self._volume_info(target.createXML(document, 0))
            if probed != source_format:
                raise InvalidInput(
                    f"{source_path} reads as {probed or 'an unknown format'} to the host's libvirt, not {source_format}: "
                    "a full copy on a remote host is libvirt's, which copies what it reads; make a linked clone instead",
                    field="clone_from",
                )
            volume = self._create_from(target, document, origin, name)
            if volume.info()[1] < capacity:
                self._or_delete(volume, lambda: volume.resize(capacity, 0))
            return self._volume_info(volume)

    @staticmethod
    def _clone_source(path: str) -> str:
        absolute_path(path, field="clone_from")
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
    def _or_delete(volume: Any, step: Callable[[], object]) -> None:
        """Run `step`; if it fails, delete the volume it was filling, then re-raise."""
        try:
            step()
        except (libvirt.libvirtError, VaporError):
            with suppress(libvirt.libvirtError):
                volume.delete(0)
            raise
