"""Library ISOs on remote hosts (issue 15, point 5): one checked copy per ISO and host.

The ISO library is one set of files on the portal's machine. A host whose
libvirt URI is this machine's own daemon (`host_is_local`) opens those files
in place, as always. A VM on a remote host boots from a copy in that host's
ISO pool (`ISO_POOL`, a directory pool made on first use): `iso_on_host`
streams the library file into a new volume through libvirt's stream upload,
reads it back on the host through libvirt's stream download, hashing as it
comes, and keeps it only when that sha256 is the library's. The copy is
recorded per host (`vms.iso_copies.IsoHostCopy`) and reused by every later VM
there for as long as its volume exists and the library's sha256 is the one
checked. VMs that need the same ISO on the same host at the same moment
share one copy: the row is unique per ISO and host, one task claims the copy
and the others wait for it.

When an ISO is deleted, its copies' volumes are deleted from their hosts
(`iso_copies_remove`, on `isos.signals.iso_deleted`); the row of a host that
did not answer stays (with the ISO empty) and the volume is removed when the
host answers again (the state refresh schedule and the next copy to that
host try again).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from isos.models import IsoImage
from vaporsite.errors import Conflict, HypervisorError, VaporError
from vms import hypervisor
from vms.hypervisor import Hypervisor
from vms.hypervisor.uris import files_are_local
from vms.iso_copies import IsoCopyStatus, IsoHostCopy
from vms.models import Host

log = logging.getLogger("vapor.vms.iso_copies")

ISO_POOL = "vapor-isos"  # the pool holding library ISO copies on a remote host
ISO_POOL_DIR = "/var/lib/libvirt/vapor-isos"  # where it is made when the host has no such pool
PROGRESS_EVERY = 1.0  # seconds between two progress writes of one copy
STALE_AFTER = timedelta(minutes=2)  # a copy whose row did not move for this long has lost its worker
WAIT_POLL = 0.5  # seconds between two looks at a copy another task is making

Progress = Callable[[int, int], None]


def host_is_local(host: Host) -> bool:
    """Whether `host` is this machine's own libvirt daemon: its domains open the library's files in place.

    Local: a URI without a host name whose transport is the local socket (`qemu:///system`,
    `qemu+unix:///system`, `qemu:///session`) and the in-process test driver. Anything naming a
    host (`qemu+tcp://h2/system`, `qemu+ssh://...`) is remote, even one naming this machine: its
    daemon may run in another mount namespace.
    """
    return files_are_local(host.libvirt_uri)


def copy_volume_name(iso_id: str) -> str:
    """The copy's volume name: from the ISO's id, which is never handed out twice (not from its name, which changes)."""
    return f"{iso_id}.iso"


def iso_on_host(*, iso: IsoImage, host: Host, hv: Hypervisor | None = None, progress: Progress | None = None) -> str:
    """The path `host`'s domains open for `iso`: the library file on a local host, else a checked copy there.

    Copies when the host has no ready copy (or its volume vanished, or the library's sha256 moved
    since it was checked), waits when another task is copying it. `progress(done, total)` follows
    the bytes sent. A copy whose sha256 on the host is not the library's is deleted and the row
    marked failed: HypervisorError, and the next call tries again.
    """
    if host_is_local(host):
        return iso.path
    hv = hv or hypervisor.get_hypervisor(host.libvirt_uri)
    iso_copies_remove(host=host, hv=hv)  # copies of deleted ISOs a down host kept: it answers now
    deadline = time.monotonic() + settings.VAPOR.q_timeout / 2
    while True:
        row, created = IsoHostCopy.objects.get_or_create(
            iso=iso,
            host=host,
            defaults={"iso_ref": iso.pk, "pool": ISO_POOL, "volume": copy_volume_name(iso.pk), "bytes_total": iso.size},
        )
        if created:
            return _copy(row, iso, hv, progress)
        if row.status == IsoCopyStatus.READY and _still_good(row, iso, hv):
            return row.path
        if row.status != IsoCopyStatus.COPYING or row.updated_at < timezone.now() - STALE_AFTER:
            # Ready but gone or outdated, failed, or a copy whose worker died: this task copies it, if it is first.
            if _claim(row):
                return _copy(row, iso, hv, progress)
            continue
        if time.monotonic() > deadline:
            raise Conflict(f"ISO {iso.pk} is still being copied to host {host.name} by another task; try again later", code="iso_copying")
        _wait()


def _wait() -> None:
    """Between two looks at a copy another task is making."""
    time.sleep(WAIT_POLL)


def _still_good(row: IsoHostCopy, iso: IsoImage, hv: Hypervisor) -> bool:
    """A ready copy is used as it is while its volume exists and the library's sha256 is still the one it matched."""
    if iso.sha256_hash and iso.sha256_hash != row.sha256:
        log.info("ISO %s changed since its copy on %s was checked: copying it again", iso.pk, row.host)
        return False
    if not hypervisor.volume_exists(hv, row.pool, row.volume):
        log.warning("the copy of ISO %s on host %s vanished (%s): copying it again", iso.pk, row.host, row.path)
        return False
    return True


def _claim(row: IsoHostCopy) -> bool:
    """Take the copy over from the state this task saw (one UPDATE: of two tasks, one wins)."""
    return bool(
        IsoHostCopy.objects.filter(pk=row.pk, status=row.status, updated_at=row.updated_at).update(
            status=IsoCopyStatus.COPYING, bytes_done=0, error="", updated_at=timezone.now()
        )
    )


def _expected_sha256(iso: IsoImage) -> str:
    """The library's sha256; hashed here when the ISO was registered a moment ago and is still being hashed."""
    if iso.sha256_hash:
        return iso.sha256_hash
    digest = hashlib.sha256()
    with open(iso.path, "rb") as source:
        while chunk := source.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_writer(row: IsoHostCopy, progress: Progress | None) -> Progress:
    """Write the bytes sent on the row (and tell `progress`) at most every PROGRESS_EVERY seconds, and at the end."""
    last = 0.0

    def tick(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < PROGRESS_EVERY and done < total:
            return
        last = now
        IsoHostCopy.objects.filter(pk=row.pk).update(bytes_done=done, bytes_total=total, updated_at=timezone.now())
        if progress is not None:
            progress(done, total)

    return tick


def _heartbeat(row: IsoHostCopy) -> Progress:
    """While the copy is read back and hashed: the row shows it is alive (others waiting for it do not take it over)."""
    last = time.monotonic()

    def beat(done: int, total: int) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            IsoHostCopy.objects.filter(pk=row.pk).update(updated_at=timezone.now())

    return beat


def _fail(row: IsoHostCopy, message: str) -> None:
    IsoHostCopy.objects.filter(pk=row.pk).update(status=IsoCopyStatus.FAILED, error=message, updated_at=timezone.now())


def _copy(row: IsoHostCopy, iso: IsoImage, hv: Hypervisor, progress: Progress | None) -> str:
    pool, name, host = ISO_POOL, copy_volume_name(iso.pk), row.host
    started = time.monotonic()
    try:
        expected = _expected_sha256(iso)
        hv.ensure_dir_pool(pool, ISO_POOL_DIR)
        if hypervisor.volume_exists(hv, pool, name):
            # Ours by its name (the ISO's id): a copy that vanished from the row's view, failed half-way or is outdated.
            hv.delete_volume(pool, name)
        IsoHostCopy.objects.filter(pk=row.pk).update(pool=pool, volume=name, path="", sha256="", checked_at=None, bytes_done=0)
        volume = hv.upload_volume_file(pool, name, iso.path, owned=False, progress=_progress_writer(row, progress))
        got = hv.volume_sha256(pool, name, progress=_heartbeat(row))
    except Exception as exc:
        message = exc.message if isinstance(exc, VaporError) else f"{type(exc).__name__}: {exc}"
        _fail(row, f"copy to host {host.name} failed: {message}")
        log.warning("copying ISO %s to host %s failed: %s", iso.pk, host.name, message)
        raise
    if got != expected:
        try:
            hv.delete_volume(pool, name)
        except VaporError as exc:
            log.warning("could not delete the bad copy of ISO %s on host %s: %s", iso.pk, host.name, exc.message)
        message = f"the copy of ISO {iso.pk} ({iso.name}) on host {host.name} has sha256 {got}, not the library's {expected}: copy deleted"
        _fail(row, message)
        log.warning("%s", message)
        raise HypervisorError(message, code="iso_copy_mismatch")
    IsoHostCopy.objects.filter(pk=row.pk).update(
        status=IsoCopyStatus.READY,
        path=volume.path,
        sha256=got,
        checked_at=timezone.now(),
        bytes_done=volume.capacity or iso.size or 0,
        error="",
        updated_at=timezone.now(),
    )
    log.info("copied ISO %s to host %s (%s) in %.1f s, sha256 checked there", iso.pk, host.name, volume.path, time.monotonic() - started)
    return volume.path


def iso_copies_remove(*, host: Host | None = None, hv: Hypervisor | None = None) -> list[str]:
    """Delete the volumes of copies whose ISO was deleted (on `host` only, when given); returns notes on the
    hosts that did not answer (their rows stay, so a later call removes them)."""
    orphans = IsoHostCopy.objects.filter(iso__isnull=True).select_related("host")
    if host is not None:
        orphans = orphans.filter(host=host)
    notes: list[str] = []
    for row in orphans:
        try:
            target = hv if hv is not None and host is not None else hypervisor.get_hypervisor(row.host.libvirt_uri)
            if row.volume and hypervisor.volume_exists(target, row.pool, row.volume):
                target.delete_volume(row.pool, row.volume)
        except VaporError as exc:
            note = (
                f"the copy of ISO {row.iso_ref} on host {row.host.name} is not removed yet ({exc.message}); "
                "it is removed once the host answers"
            )
            IsoHostCopy.objects.filter(pk=row.pk).update(error=note, updated_at=timezone.now())
            log.warning("%s", note)
            notes.append(note)
            continue
        row.delete()
        log.info("removed the copy of deleted ISO %s from host %s", row.iso_ref, row.host.name)
    return notes


def on_iso_deleted(sender: Any, iso_id: str, **kwargs: Any) -> list[str]:
    """`isos.signals.iso_deleted`: its copies (now rows without an ISO) go from their hosts."""
    return iso_copies_remove()


def iso_copies_of(iso: IsoImage) -> list[IsoHostCopy]:
    return list(IsoHostCopy.objects.filter(Q(iso=iso)).select_related("host").order_by("host__name"))
