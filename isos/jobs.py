"""The long-running ISO work: downloading and hashing. Run by django-q2.

Both are idempotent: they act only on a row in the status they expect and
finish with a conditional UPDATE, so a task delivered twice, or a download
cancelled or deleted while it runs, leaves one consistent outcome. Each
progress write doubles as the cancellation check; a download writes its
progress every PROGRESS_INTERVAL whether bytes arrive or not (`fetch` calls
back every TICK), so a cancel stops it within a second at any speed, and a row
whose `updated_at` stands still has no live worker (the janitor's test).

A download holds the lock of its `.part` file (`isos.partfile`) from its first
byte until the file is in place or removed, so nothing else removes it meanwhile.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.utils import timezone

from isos.choices import IsoStatus
from isos.download import FetchCancelled, FetchError, FetchPolicy, fetch
from isos.hashing import Digests, DualHasher, hash_file
from isos.inspect import guess_os, inspect_iso
from isos.models import IsoImage
from isos.partfile import PartBusy, PartFile, remove_if_unowned
from isos.services import iso_fail, temp_path
from vaporsite.deliveries import give_up_reason, start_delivery
from vaporsite.errors import VaporError

log = logging.getLogger("vapor.isos")

PROGRESS_INTERVAL = 0.5  # seconds between progress writes (and cancel checks)
PAUSE_STEP = 0.5  # seconds: a pause between attempts checks for a cancel this often
PART_LOCK_WAIT = 5.0  # seconds a delivery waits for the part file's lock (a cancelled writer lets go within 2 s)
WRITE_BEHIND_STEP = 32 * 1024 * 1024  # bytes written between two hand-overs of the download to the disk


class _Progress:
    """Writes bytes_done at most every PROGRESS_INTERVAL; raises FetchCancelled
    once the row has left `status` (cancelled, deleted)."""

    def __init__(self, iso_id: str, status: str) -> None:
        self.iso_id, self.status = iso_id, status
        self.last = 0.0

    def __call__(self, done: int, total: int | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        fields: dict[str, object] = {"bytes_done": done, "updated_at": timezone.now()}
        if total is not None:
            fields["bytes_total"] = total
        if not IsoImage.objects.filter(pk=self.iso_id, status=self.status).update(**fields):
            raise FetchCancelled(f"ISO {self.iso_id} is no longer {self.status}")


class _WriteBehind:
    """A download's temp file, handed to the disk while it grows.

    The job ends with an fsync, and the kernel starts writing dirty pages on its own only once they fill a
    tenth of memory: left alone, a whole ISO waits in the page cache and the fsync then writes all of it while
    the download stands still (about a second per GiB here). Every WRITE_BEHIND_STEP bytes,
    posix_fadvise(DONTNEED) starts writeback of what is written so far without waiting for it, and drops the
    pages already on disk, so the disk works while the network does, the final fsync finds only the last few
    MiB, and a 16 GiB download does not push everything else out of the page cache.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._written = 0
        self._handed = 0

    def write(self, data: bytes, /) -> int:
        count = self._stream.write(data)
        self._written += count
        if self._written - self._handed >= WRITE_BEHIND_STEP:
            self._stream.flush()
            os.posix_fadvise(self._stream.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # 0, 0: the whole file
            self._handed = self._written
        return count


def _start_delivery(iso_id: str, status: str) -> IsoImage | None:
    """Count this delivery of the task (`vaporsite.deliveries`); None if there is nothing to do or
    too many started already, in which case the ISO fails with the reason."""
    if not start_delivery(IsoImage.objects.filter(pk=iso_id, status=status)):
        return None  # cancelled, deleted, or already finished by an earlier delivery
    iso = IsoImage.objects.get(pk=iso_id)
    reason = give_up_reason(iso.attempts, "the download" if status == IsoStatus.DOWNLOADING else "the hashing")
    if reason:
        iso_fail(iso_id=iso_id, error=reason, expect=status)
        remove_if_unowned(temp_path(iso))
        return None
    return iso


def iso_run_download(*, iso_id: str, sleep: Callable[[float], None] = time.sleep) -> None:
    iso = _start_delivery(iso_id, IsoStatus.DOWNLOADING)
    if iso is None:
        return
    started = time.monotonic()  # the deadline covers every attempt and the pauses between them
    temp = temp_path(iso)
    try:
        temp.parent.mkdir(parents=True, exist_ok=True)
        part = PartFile.claim(temp, wait=PART_LOCK_WAIT)
    except PartBusy:
        # Another delivery of this task is live and owns the row's download; a cancelled one that does not let go
        # leaves the row without progress, which the janitor fails.
        log.warning("download of %s not started: %s is still being written by another worker", iso_id, temp)
        return
    except OSError as exc:
        iso_fail(iso_id=iso_id, error=f"cannot write {temp}: {exc.strerror or exc}", expect=IsoStatus.DOWNLOADING)
        return
    with part:
        digests = _download(iso, part, started, sleep)
        if digests is not None:
            _finish_download(iso, part, digests)


def _download(iso: IsoImage, part: PartFile, started: float, sleep: Callable[[float], None]) -> Digests | None:
    """The attempts; the digests of the bytes in `part`, or None when the ISO failed or was cancelled (part removed)."""
    iso_id, temp = iso.pk, part.path
    attempts = settings.VAPOR.download_attempts
    policy = FetchPolicy.from_settings()
    progress = _Progress(iso_id, IsoStatus.DOWNLOADING)
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(iso, part, policy, progress, started)
        except FetchCancelled:
            part.discard()
            log.info("download of %s stopped: cancelled or deleted", iso_id)
            return None
        except FetchError as exc:
            if exc.transient and attempt < attempts:
                note = f"attempt {attempt} of {attempts} failed: {exc.message}; retrying"
                IsoImage.objects.filter(pk=iso_id, status=IsoStatus.DOWNLOADING).update(error=note, bytes_done=0)
                try:
                    _pause(min(2**attempt, 30, max(policy.deadline - (time.monotonic() - started), 0)), progress, sleep)
                except FetchCancelled:
                    part.discard()
                    return None
                continue
            part.discard()
            iso_fail(iso_id=iso_id, error=_attempts_note(exc.message, attempt), expect=IsoStatus.DOWNLOADING)
            return None
        except VaporError as exc:  # e.g. a redirect to a refused address
            part.discard()
            iso_fail(iso_id=iso_id, error=exc.message, expect=IsoStatus.DOWNLOADING)
            return None
        except OSError as exc:
            part.discard()
            iso_fail(iso_id=iso_id, error=f"cannot write {temp}: {exc.strerror or exc}", expect=IsoStatus.DOWNLOADING)
            return None
    raise AssertionError("unreachable: the last attempt returns or fails")  # pragma: no cover


def _pause(seconds: float, progress: _Progress, sleep: Callable[[float], None]) -> None:
    """Wait between two attempts in steps of PROGRESS_INTERVAL at most, checking for a cancel between steps."""
    steps = max(1, math.ceil(seconds / PAUSE_STEP))
    for _ in range(steps):
        progress(0, None, force=True)
        sleep(seconds / steps)


def _attempts_note(message: str, attempt: int) -> str:
    return message if attempt == 1 else f"{message} (after {attempt} attempts)"


def _download_once(iso: IsoImage, part: PartFile, policy: FetchPolicy, progress: _Progress, started: float) -> Digests:
    part.reset()
    out = part.stream
    with DualHasher() as hasher:
        result = fetch(
            iso.source_url,
            _WriteBehind(out),
            policy=policy,
            on_chunk=hasher.update,
            on_progress=progress,
            on_tick=progress,
            started=started,
        )
        out.flush()
        os.fsync(out.fileno())
        progress(result.bytes_written, result.content_length or result.bytes_written, force=True)
        return hasher.digests()


def _finish_download(iso: IsoImage, part: PartFile, digests: Digests) -> None:
    """Verify the part and link it into place, still holding its lock (the janitor keeps off it)."""
    temp = part.path

    def fail(reason: str) -> None:
        part.discard()
        iso_fail(iso_id=iso.pk, error=reason, expect=IsoStatus.DOWNLOADING)

    if iso.expected_checksum and not digests.matches(iso.expected_checksum):
        algorithm = iso.expected_checksum.split(":", 1)[0]
        actual = digests.md5 if algorithm == "md5" else digests.sha256
        return fail(f"checksum mismatch: expected {iso.expected_checksum}, got {algorithm}:{actual}")
    try:
        info = inspect_iso(temp, field="url")
    except VaporError as exc:
        return fail(f"the download is not an ISO image: {exc.message}")
    declared = _declared_size(temp)
    if declared is not None and info.size < declared:
        # A server announcing a Content-Length shorter than the file sends a body that ends cleanly.
        return fail(f"the download is truncated: {info.size} bytes, but the ISO's volume descriptor says {declared}")
    final = Path(iso.path)
    try:
        os.link(temp, final)  # atomic and never overwrites an existing file
    except FileExistsError:
        return fail(f"{final} appeared on the host during the download; not overwritten")
    except OSError as exc:
        return fail(f"cannot move the download into place at {final}: {exc.strerror or exc}")
    part.discard()
    guess = guess_os(info.volume_label, final.name)
    fields: dict[str, object] = {
        "status": IsoStatus.READY,
        "size": info.size,
        "file_mtime_ns": final.stat().st_mtime_ns,
        "bytes_done": info.size,
        "bytes_total": info.size,
        "md5_hash": digests.md5,
        "sha256_hash": digests.sha256,
        "boot_type": info.boot_type,
        "volume_label": info.volume_label,
        "error": "",
        "updated_at": timezone.now(),
    }
    if not iso.os_type and not iso.os_variant:
        fields.update(os_type=guess.os_type, os_variant=guess.os_variant)
    if not iso.architecture:
        fields["architecture"] = guess.architecture
    if not IsoImage.objects.filter(pk=iso.pk, status=IsoStatus.DOWNLOADING).update(**fields):
        final.unlink(missing_ok=True)  # cancelled or deleted at the last moment
        return None
    log.info("downloaded %s to %s (%d bytes)", iso.pk, final, info.size)
    return None


def _declared_size(path: Path) -> int | None:
    """The size the ISO 9660 primary volume descriptor (sector 16) gives: volume space size x logical block size.
    None when sector 16 holds no primary descriptor (a UDF-only image)."""
    try:
        with open(path, "rb") as image:
            image.seek(16 * 2048)
            pvd = image.read(2048)
    except OSError:
        return None
    if len(pvd) < 130 or pvd[:6] != b"\x01CD001":
        return None
    blocks, block_size = struct.unpack_from("<I", pvd, 80)[0], struct.unpack_from("<H", pvd, 128)[0]
    return blocks * block_size


def iso_run_hash(*, iso_id: str) -> None:
    iso = _start_delivery(iso_id, IsoStatus.HASHING)
    if iso is None:
        return
    path = Path(iso.path)
    progress = _Progress(iso_id, IsoStatus.HASHING)
    done = 0

    def advance(chunk: int) -> None:
        nonlocal done
        done += chunk
        progress(done, iso.size)

    try:
        # What the file is when the read starts: a later scan finds it unchanged (or changed since) by these.
        before = path.stat()
        size = before.st_size
        digests = hash_file(path, on_progress=advance)
    except FetchCancelled:
        return
    except OSError as exc:
        iso_fail(iso_id=iso_id, error=f"cannot read {path}: {exc.strerror or exc}", expect=IsoStatus.HASHING)
        return
    IsoImage.objects.filter(pk=iso_id, status=IsoStatus.HASHING).update(
        status=IsoStatus.READY,
        md5_hash=digests.md5,
        sha256_hash=digests.sha256,
        size=size,
        file_mtime_ns=before.st_mtime_ns,
        bytes_done=size,
        bytes_total=size,
        error="",
        updated_at=timezone.now(),
    )
