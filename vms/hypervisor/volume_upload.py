"""Uploading bytes into a new volume through libvirt's stream (virStorageVolUpload): the upload half of `LibvirtDriver`.

Used for the cloud-init seed ISO: Vapor builds it in memory and libvirt
writes it into the pool, so it works for a pool on another host too and the
file belongs to the pool like any volume. A volume half-written is deleted.
"""

from __future__ import annotations

from contextlib import suppress

import libvirt

from vms.hypervisor import VolumeInfo
from vms.hypervisor._connection import calls
from vms.hypervisor.documents.volume import volume_xml
from vms.hypervisor.errors import validate_volume_name
from vms.hypervisor.storage import StorageMixin, volume_owner

_CHUNK = 256 * 1024


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


def _send(stream: libvirt.virStream, chunk: bytes) -> None:
    """Send all of `chunk` (stream.send may take part of it)."""
    view = memoryview(chunk)
    while view:
        sent = stream.send(bytes(view))
        if sent < 0:
            raise libvirt.libvirtError("stream send failed")
        view = view[sent:]
