"""Domain snapshots and the UEFI variables Vapor keeps beside them.

A mixin of `LibvirtDriver`. libvirt 9.0 / QEMU 7.2 take internal snapshots
(inside the qcow2 disks) of a shut-off domain, UEFI or not, and of a running
BIOS domain with its memory; it refuses them for a running domain with pflash
firmware and for a disk-only snapshot of a running domain. An internal
snapshot never holds a UEFI domain's NVRAM (a raw file libvirt keeps), so
`save_nvram` copies it into a volume and `restore_nvram` writes it back.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import libvirt

from vaporsite.errors import Conflict, HypervisorError, NotFound
from vms.hypervisor import VolumeInfo
from vms.hypervisor._connection import Connection, calls, lookup_or_none
from vms.hypervisor.documents.snapshot import NVRAM_DIR, parse_nvram_path, parse_snapshot, snapshot_xml
from vms.hypervisor.documents.volume import volume_xml
from vms.hypervisor.errors import VIR_ERR_NO_DOMAIN, validate_volume_name
from vms.hypervisor.specs import LiveSnapshot, SnapshotSpec
from vms.hypervisor.storage import volume_owner

VIR_ERR_NO_DOMAIN_SNAPSHOT = 72


class SnapshotsMixin(Connection):
    """Snapshots of a domain, by name."""

    def _snapshot_domain(self, name: str) -> Any:
        domain = lookup_or_none(self._connection().lookupByName, name, VIR_ERR_NO_DOMAIN)
        if domain is None:
            raise NotFound(f"Domain not found: no domain with matching name '{name}'", field="name")
        return domain

    def list_snapshots(self, name: str) -> list[LiveSnapshot]:
        domain = self._snapshot_domain(name)
        with calls():
            return [parse_snapshot(s.getXMLDesc(0)) for s in domain.listAllSnapshots(0)]

    def create_snapshot(self, name: str, spec: SnapshotSpec) -> LiveSnapshot:
        """Take the snapshot `spec` describes; libvirt's refusal leaves as its Vapor error, nothing made."""
        domain = self._snapshot_domain(name)
        document = snapshot_xml(spec)
        flags = 0 if spec.memory == "internal" else libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        with calls(field="name"):
            return parse_snapshot(domain.snapshotCreateXML(document, flags).getXMLDesc(0))

    def revert_snapshot(self, name: str, snapshot: str) -> str:
        """Go back to `snapshot` (a running one resumes, a shut-off one leaves the domain off); the state after."""
        domain = self._snapshot_domain(name)
        with calls(field="name"):
            domain.revertToSnapshot(self._lookup_snapshot(domain, snapshot), 0)
            state, _reason = domain.state(0)
        return "running" if state == libvirt.VIR_DOMAIN_RUNNING else "paused" if state == libvirt.VIR_DOMAIN_PAUSED else "shutoff"

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        """Delete `snapshot` (from the disks too); a missing one is fine."""
        domain = self._snapshot_domain(name)
        found = lookup_or_none(domain.snapshotLookupByName, snapshot, VIR_ERR_NO_DOMAIN_SNAPSHOT)
        if found is not None:
            with calls(field="name"):
                found.delete(0)

    @staticmethod
    def _lookup_snapshot(domain: Any, snapshot: str) -> Any:
        found = lookup_or_none(domain.snapshotLookupByName, snapshot, VIR_ERR_NO_DOMAIN_SNAPSHOT)
        if found is None:
            raise NotFound(f"domain '{domain.name()}' has no snapshot '{snapshot}'", field="snapshot", code="snapshot_not_found")
        return found

    def save_nvram(self, name: str, pool: str, volume: str) -> VolumeInfo | None:
        """Copy the domain's UEFI variables into a new raw volume `volume` of `pool`.

        None (nothing made) when the domain has no NVRAM file yet: libvirt makes
        it from the template at the first start. Reads the file on this machine.
        """
        validate_volume_name(volume)
        path = parse_nvram_path(self._snapshot_domain(name).XMLDesc(0), NVRAM_DIR)
        try:
            if not path or not Path(path).is_file():
                return None
            data = Path(path).read_bytes()
        except OSError as exc:
            raise _unreachable(path, exc) from exc
        conn = self._connection()
        with calls(field="name"):
            target = conn.storagePoolLookupByName(pool)
            created = target.createXML(volume_xml(volume, len(data), "raw", owner=volume_owner()), 0)
        try:
            with calls(field="name"):
                stream = conn.newStream(0)
                created.upload(stream, 0, len(data), 0)
                stream.sendAll(lambda _stream, size, source: source.read(size), io.BytesIO(data))
                stream.finish()
                return VolumeInfo(volume, created.path(), len(data), len(data), "raw")
        except Exception:
            with calls():
                created.delete(0)
            raise

    def restore_nvram(self, name: str, pool: str, volume: str | None) -> None:
        """Put back the UEFI variables `save_nvram` copied (None: the NVRAM the template gives at the next start).

        The domain must be shut off. Writes the file on this machine, by a rename, keeping its owner and mode.
        """
        domain = self._snapshot_domain(name)
        with calls(field="name"):
            if domain.isActive():
                raise Conflict(f"domain '{name}' is running: its UEFI variables are restored only while it is shut off", code="vm_running")
            path = parse_nvram_path(domain.XMLDesc(0), NVRAM_DIR)
        if not path:
            return
        target = Path(path)
        if volume is None:
            try:
                target.unlink(missing_ok=True)
            except OSError as exc:
                raise _unreachable(path, exc) from exc
            return
        conn = self._connection()
        with calls(field="name"):
            saved = conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            _type, capacity, _allocation = saved.info()
            chunks: list[bytes] = []
            stream = conn.newStream(0)
            saved.download(stream, 0, capacity, 0)
            stream.recvAll(lambda _stream, data, sink: sink.append(data), chunks)
            stream.finish()
        try:
            _write_like(target, b"".join(chunks))
        except OSError as exc:
            raise _unreachable(path, exc) from exc


def _write_like(target: Path, data: bytes) -> None:
    """Replace `target` by `data` with a rename, keeping its owner (or its directory's) and mode 0600."""
    stat = target.stat() if target.exists() else target.parent.stat()
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o600)
        os.chown(temporary, stat.st_uid, stat.st_gid)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _unreachable(path: str, exc: OSError) -> HypervisorError:
    return HypervisorError(
        f"cannot reach the UEFI variables at {path}: {exc.strerror or exc}; Vapor copies them itself, so it must run on the "
        "libvirt host with access to libvirt's nvram directory",
        code="nvram_unreachable",
    )
