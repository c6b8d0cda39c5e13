"""Moving bytes into and out of volumes through libvirt's streams (virStorageVolUpload/Download).

Used for the cloud-init seed ISO (built in memory) and for the copies of
library ISOs on remote hosts (streamed from the file in chunks, issue 15):
libvirt writes them into the pool, so it works for a pool on another host
too and the file belongs to the pool like any volume. A volume half-written
is deleted. `volume_sha256` reads a volume back through the stream and hashes
it as it comes, so a copy is checked where it lies.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from contextlib import suppress

import libvirt

from vaporsite.errors import NotFound
from vms.hypervisor import VolumeInfo
from vms.hypervisor._connection import calls
from vms.hypervisor.documents.volume import volume_xml
from vms.hypervisor.errors import validate_volume_name
from vms.hypervisor.storage import StorageMixin, volume_owner

_CHUNK = 256 * 1024
# A file is read and sent in pieces of one stream message (libvirt's largest payload is 256 KiB): a larger
# piece is only taken in part by each send, and memory stays flat whatever the file's size.
_FILE_CHUNK = 256 * 1024


class VolumeUploadMixin(StorageMixin):
    def upload_volume(self, pool: str, name: str, data: bytes, fmt: str = "raw") -> VolumeInfo:
        """A new volume `name` in `pool` holding exactly `data` (Conflict if the name is taken)."""
        validate_volume_name(name)
        target = self._lookup_pool(pool)
        with calls(field="name"):
            volume = target.createXML(volume_xml(name, len(data), fmt, owner=volume_owner()), 0)
            stream = self._connection().newStream(0)
            try:
                volume.upload(stream, 0, len(data), 0)
                for start in range(0, len(data), _CHUNK):
                    _send(stream, data[start : start + _CHUNK])
                stream.finish()
            except libvirt.libvirtError:
                with suppress(libvirt.libvirtError):
                    stream.abort()
                with suppress(libvirt.libvirtError):
                    volume.delete(0)
                raise
            return self._volume_info(volume)

    def upload_volume_file(
        self, pool: str, name: str, path: str, *, fmt: str = "raw", owned: bool = True, progress: Callable[[int, int], None] | None = None
    ) -> VolumeInfo:
        """A new volume `name` in `pool` holding the bytes of the local file `path`, streamed in chunks.

        The file is read piece by piece (never whole into memory); `progress(done, total)` is called after
        each piece. `owned`: the volume's file belongs to this process's user (a pool on this machine);
        False for a remote host, where that uid means nothing. Conflict if the name is taken; a volume
        half-written (the stream or the file failed) is deleted. The file must not change meanwhile:
        fewer bytes than its size at the start fail the upload.
        """
        validate_volume_name(name)
        target = self._lookup_pool(pool)
        with open(path, "rb") as source:
            total = os.fstat(source.fileno()).st_size
            with calls(field="name"):
                volume = target.createXML(volume_xml(name, max(total, 1), fmt, owner=volume_owner() if owned else None), 0)
                stream = self._connection().newStream(0)
                try:
                    volume.upload(stream, 0, total, 0)
                    done = 0
                    while done < total:
                        chunk = source.read(min(_FILE_CHUNK, total - done))
                        if not chunk:
                            raise libvirt.libvirtError(f"{path} shrank while it was being uploaded ({done} of {total} bytes)")
                        _send(stream, chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                    stream.finish()
                except BaseException:
                    with suppress(libvirt.libvirtError):
                        stream.abort()
                    with suppress(libvirt.libvirtError):
                        volume.delete(0)
                    raise
                return self._volume_info(volume)

    def volume_sha256(self, pool: str, name: str, *, progress: Callable[[int, int], None] | None = None) -> str:
        """The sha256 (hex) of the volume's bytes as libvirt reads them on its host, streamed and hashed as they come."""
        volume = self._lookup_volume(pool, name)
        digest = hashlib.sha256()
        with calls(field="name"):
            total = volume.info()[1]
            stream = self._connection().newStream(0)
            try:
                volume.download(stream, 0, 0, 0)
                done = 0
                while True:
                    chunk = stream.recv(_FILE_CHUNK)
                    if not chunk:
                        break
                    if isinstance(chunk, int):  # -2: would block, only on a non-blocking stream (this one is not)
                        raise libvirt.libvirtError("stream receive failed")
                    digest.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                stream.finish()
            except BaseException:
                with suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return digest.hexdigest()

    def read_volume(self, path: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer where the file ends) of the volume whose file is exactly `path` on the
        host, read through libvirt's stream download: how Vapor reads an image header on a host whose files it cannot
        open. NotFound when no active pool of the host holds a volume at that path."""
        volume = self._volume_at(path)
        if volume is None:
            raise NotFound(f"{path} is no volume of a storage pool on the host", field="path")
        with calls(field="path"):
            stream = self._connection().newStream(0)
            try:
                volume.download(stream, offset, length, 0)
                parts: list[bytes] = []
                got = 0
                while got < length:
                    chunk = stream.recv(min(_FILE_CHUNK, length - got))
                    if not chunk or isinstance(chunk, int):
                        break
                    parts.append(chunk)
                    got += len(chunk)
                stream.finish()
            except BaseException:
                with suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return b"".join(parts)


def _send(stream: libvirt.virStream, chunk: bytes) -> None:
    """Send all of `chunk` (stream.send may take part of it; the rest is sent without copying what went)."""
    sent = stream.send(chunk)
    while sent < len(chunk):
        if sent < 0:
            raise libvirt.libvirtError("stream send failed")
        chunk = chunk[sent:]
        sent = stream.send(chunk)
