"""ISO upload in chunks, resumable after a cut: the rules (services, as isos.services holds the others).

The protocol (docs/iso-upload.md): `iso_upload_create` reserves a file name and an ISO name and returns an
upload at offset 0; `iso_upload_append` writes one chunk, which must start exactly at the upload's offset
(`Content-Range: bytes START-END/SIZE`), else a 409 that tells the offset; when the last byte lands the file
is checked as a registered ISO is (ISO 9660/UDF content, name and path free, never over an existing file),
linked into the download directory and becomes a READY IsoImage with the hashes computed while it was written.
`iso_upload_cancel` removes the row and the partial file.

The bytes go straight from the request's stream into the part file (`IsoUpload.part_path`, named as a
download's `.part`) in reads of READ_SIZE; each piece, once written, is queued for md5 and sha256, which run on
two pool threads (`PipelinedHasher`) while the request reads and writes the next piece, answers, and receives the
next chunk. Nothing holds the whole body: MEMORY_BOUND is what one upload holds at most. A writer holds an flock
on the part file for the whole chunk (isos.partfile): a second request for the same upload at the same moment is
a 409, and the janitor (`iso_cleanup`) leaves it alone.

The offset is the part file's size (read under the lock by a writer, by a stat for GET/HEAD): no database write
per chunk. The row keeps the ownership and the metadata; its `offset` and `updated_at` are refreshed every
ROW_REFRESH_SECONDS at most, and when a chunk is cut.

The hash state: hashlib's objects cannot be saved, so they stay in the web process that wrote the last
chunk (`_HASH_STATES`, keyed by upload id, with the offset and the file's inode they stand for), still hashing
between chunks. A chunk that lands in another process (several web workers, a restart of the server) hashes the
part file's bytes again once, up to its offset, then goes on from there; the digests are the same either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from isos.choices import IsoStatus
from isos.hashing import QUEUE_DEPTH, PipelinedHasher
from isos.inspect import FIRST_DESCRIPTOR, SECTOR, NotAnIsoImage, inspect_iso
from isos.models import IsoImage, IsoUpload, new_upload_id
from isos.services import SAFE_FILENAME_RE, IsoMetadata, _check_free, _clean_tags, _create, _resolve_os
from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError

log = logging.getLogger("vapor.isos")

READ_SIZE = 4 * 1024**2  # bytes read from the request at a time
# Memory one writing upload holds besides the request's body: the piece being read plus the pieces queued for the
# hashes (PipelinedHasher's depth): (1 + QUEUE_DEPTH) x READ_SIZE = 20 MiB.
MEMORY_BOUND = (1 + QUEUE_DEPTH) * READ_SIZE
# The row's offset and updated_at are written at most this often while chunks arrive (the part file's size is
# the offset the API tells; the row's is for the admin and the janitor, which expires uploads after a day).
ROW_REFRESH_SECONDS = 30
MAX_CHUNK = 64 * 1024**2  # bytes one request may carry (the server spools a request's body before the view runs)
MIN_SIZE = (FIRST_DESCRIPTOR + 1) * SECTOR  # the smallest file that can hold an ISO volume descriptor
CONTENT_RANGE_RE = re.compile(r"^bytes (\d{1,20})-(\d{1,20})/(\d{1,20})$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class OffsetMismatch(Conflict):
    """The chunk does not start where the upload stands: the client resumes from `offset`."""

    def __init__(self, message: str, *, offset: int) -> None:
        super().__init__(message, field="Content-Range", code="offset_mismatch", offset=offset)


@dataclass
class _Held:
    offset: int
    inode: tuple[int, int]
    hasher: PipelinedHasher


# Hash state per upload, in this process: see the module's doc. Reads and writes under _STATES_LOCK; an entry
# is only used by the request that holds the part file's flock.
_HASH_STATES: dict[str, _Held] = {}
_STATES_LOCK = threading.Lock()
# Counts re-hashes of a partial file (a chunk that found no hash state here), for the tests and the log.
rehashes = 0


def _upload_filename(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    safe = SAFE_FILENAME_RE.sub("_", base).strip("._")
    if not safe:
        raise InvalidInput("give a file name with letters or digits, e.g. debian-12.iso", field="filename")
    return safe if safe.lower().endswith(".iso") else f"{safe}.iso"


def iso_upload_create(*, owner_id: int | None, filename: str, size: int, meta: IsoMetadata, sha256: str = "") -> IsoUpload:
    """Reserve the name and the file name and start an upload at offset 0 (nothing is written yet)."""
    limit = settings.VAPOR.download_max_bytes
    if size > limit:
        raise InvalidInput(f"{size} bytes is more than the ISO size limit of {limit} bytes (VAPOR_DOWNLOAD_MAX_BYTES)", field="size")
    if size < MIN_SIZE:
        raise InvalidInput(f"{size} bytes cannot be an ISO image: its volume descriptors end at byte {MIN_SIZE}", field="size")
    if sha256 and not SHA256_RE.match(sha256):
        raise InvalidInput("must be 64 hex digits", field="sha256")
    tags = _clean_tags(meta.tags)
    name_of_file = _upload_filename(filename)
    os_type, variant, architecture = _resolve_os(meta, label="", filename=name_of_file)
    name = meta.name or name_of_file
    upload = IsoUpload(id=new_upload_id(), filename=name_of_file, name=name)
    _check_free(name=name, path=str(upload.final_path))
    if upload.final_path.exists():
        raise Conflict(
            f"{upload.final_path} already exists on the host; upload under another file name", field="filename", code="file_exists"
        )
    if IsoUpload.objects.filter(filename=name_of_file).exists():
        raise Conflict(f"{name_of_file} is being uploaded already", field="filename", code="upload_in_progress")
    if IsoUpload.objects.filter(name=name).exists():
        raise Conflict(f"an ISO named {name!r} is being uploaded already", field="name", code="upload_in_progress")
    upload.owner_id = owner_id  # type: ignore[assignment]  # an authenticated user (the permission says so)
    upload.size = size
    upload.os_type, upload.os_variant, upload.architecture = os_type, variant, architecture
    upload.description = meta.description
    upload.tags = tags
    upload.expected_sha256 = sha256.lower()
    try:
        with transaction.atomic():
            upload.save(force_insert=True)
    except IntegrityError as exc:
        raise Conflict(f"the name or file name was taken at the same time: {exc}", code="conflict") from exc
    log.info("upload %s started: %s, %d bytes", upload.pk, name_of_file, size)
    return upload


def parse_content_range(header: str, *, length: int | None) -> tuple[int, int, int]:
    """`bytes START-END/SIZE` (END inclusive) -> (start, count, size), checked against the body's length."""
    match = CONTENT_RANGE_RE.match(header.strip())
    if not match:
        raise InvalidInput("give Content-Range: bytes START-END/SIZE (END inclusive)", field="Content-Range")
    start, end, size = (int(group) for group in match.groups())
    if end < start:
        raise InvalidInput(f"the range {start}-{end} is empty or reversed", field="Content-Range")
    count = end - start + 1
    if count > MAX_CHUNK:
        raise InvalidInput(f"a chunk may carry at most {MAX_CHUNK} bytes; this one says {count}", field="Content-Range")
    if length is not None and length != count:
        raise InvalidInput(f"the range says {count} bytes but the body has {length} (Content-Length)", field="Content-Range")
    return start, count, size


@contextlib.contextmanager
def _locked_part(upload: IsoUpload, *, create: bool) -> Iterator[int]:
    path = upload.part_path
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        raise Conflict(f"the partial file of upload {upload.pk} is gone; start the upload again", code="upload_lost") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another request is writing upload {upload.pk}; wait for it", code="upload_busy") from None
        named = os.lstat(path)
        held = os.fstat(fd)
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            raise Conflict(f"upload {upload.pk} was cancelled meanwhile", code="upload_lost")
        yield fd
    finally:
        os.close(fd)


def _take_hasher(upload_id: str, offset: int, inode: tuple[int, int]) -> PipelinedHasher | None:
    with _STATES_LOCK:
        held = _HASH_STATES.pop(upload_id, None)
    if held is not None and held.offset == offset and held.inode == inode:
        return held.hasher
    return None


def _rehash(upload_id: str, fd: int, offset: int) -> PipelinedHasher:
    """md5 and sha256 of the part file's first `offset` bytes: the chunk found no hash state in this process."""
    global rehashes
    rehashes += 1
    log.info("upload %s: no hash state in this process, hashing its first %d bytes again", upload_id, offset)
    hasher = PipelinedHasher()
    done = 0
    while done < offset:
        block = os.pread(fd, min(READ_SIZE, offset - done), done)
        if not block:
            raise OSError(f"the partial file ends at {done} bytes, before its offset {offset}")
        hasher.update(block)
        done += len(block)
    return hasher


def _part_size(upload: IsoUpload) -> int:
    try:
        return os.stat(upload.part_path).st_size
    except FileNotFoundError:
        return 0


def iso_upload_get(*, upload_id: str, owner_id: int | None) -> IsoUpload:
    """The caller's own upload; someone else's is not found, as one that never was."""
    upload = IsoUpload.objects.filter(pk=upload_id, owner_id=owner_id).first()
    if upload is None:
        raise NotFound(f"no upload {upload_id} (finished, cancelled, expired, or someone else's)")
    upload.offset = min(_part_size(upload), upload.size)  # the bytes on disk, whatever the row last recorded
    return upload


@dataclass(frozen=True)
class AppendResult:
    upload: IsoUpload
    iso: IsoImage | None  # set when this chunk was the last one


def iso_upload_append(*, upload: IsoUpload, start: int, count: int, size: int, stream: Readable) -> AppendResult:
    """Write `count` bytes from `stream` at `start`, which must be the upload's offset. The last byte makes the ISO.

    The offset is the part file's size, read under its lock: every byte in the file was written by a chunk in
    order, so a chunk cut anywhere (a dropped connection, a killed server, a host crash losing unsynced bytes)
    leaves a file the next chunk continues. A body that ends early keeps what arrived and is a 400; the client
    resumes from the offset. Any failure of the finished file's checks removes the part and the upload: nothing
    is left.
    """
    if size != upload.size:
        raise InvalidInput(f"the upload was started for {upload.size} bytes, not {size}", field="Content-Range")
    if start + count > upload.size:
        raise InvalidInput(f"bytes {start}-{start + count - 1} run past the end of the {upload.size}-byte file", field="Content-Range")
    upload.part_path.parent.mkdir(parents=True, exist_ok=True)
    with _locked_part(upload, create=start == 0) as fd:
        stat = os.fstat(fd)
        upload.offset = stat.st_size  # under the lock: what every previous writer left
        if start != upload.offset:
            raise OffsetMismatch(f"the upload stands at byte {upload.offset}; send the chunk that starts there", offset=upload.offset)
        inode = (stat.st_dev, stat.st_ino)
        hasher = _take_hasher(upload.pk, upload.offset, inode)
        if hasher is None:
            hasher = _rehash(upload.pk, fd, upload.offset) if upload.offset else PipelinedHasher()
        written = _write(fd, upload.offset, count, stream, hasher)
        upload.offset += written
        if upload.offset < upload.size:
            with _STATES_LOCK:
                _HASH_STATES[upload.pk] = _Held(upload.offset, inode, hasher)  # still hashing: the next chunk goes on
            _note_progress(upload, now=written < count)
        if written < count:
            raise InvalidInput(
                f"the body ended after {written} of {count} bytes; resume from byte {upload.offset}",
                field="Content-Range",
                offset=upload.offset,
            )
        if upload.offset < upload.size:
            return AppendResult(upload=upload, iso=None)
        try:
            iso = _finish(upload, fd, hasher)
        except BaseException:
            _discard(upload)
            raise
        _discard(upload)
        return AppendResult(upload=upload, iso=iso)


def _note_progress(upload: IsoUpload, *, now: bool) -> None:
    """Record the offset in the row, at most every ROW_REFRESH_SECONDS (or `now`): one write per chunk would cost
    a database commit per chunk for a figure the part file's size already tells."""
    moment = timezone.now()
    if now or upload.updated_at is None or (moment - upload.updated_at).total_seconds() >= ROW_REFRESH_SECONDS:
        IsoUpload.objects.filter(pk=upload.pk).update(offset=upload.offset, updated_at=moment)
        upload.updated_at = moment


def _write(fd: int, offset: int, count: int, stream: Readable, hasher: PipelinedHasher) -> int:
    """Copy up to `count` bytes from `stream` to `fd` at `offset`, queueing each piece for the hashes once it is
    written (they run on other threads meanwhile); the bytes written. A failed write raises, and the hasher,
    short of the file, is not kept: the next chunk hashes the file again."""
    written = 0
    while written < count:
        block = stream.read(min(READ_SIZE, count - written))
        if not block:
            break
        view = memoryview(block)
        while view:
            done = os.pwrite(fd, view, offset + written)
            view = view[done:]
            written += done
        hasher.update(block)
    return written


def _finish(upload: IsoUpload, fd: int, hasher: PipelinedHasher) -> IsoImage:
    """The last byte landed: sync, check as a registered ISO, link into place, register READY."""
    os.fsync(fd)
    md5, sha256 = hasher.state()
    digests_md5, digests_sha256 = md5.hexdigest(), sha256.hexdigest()
    if upload.expected_sha256 and upload.expected_sha256 != digests_sha256:
        raise InvalidInput(f"the file's sha256 is {digests_sha256}, not the {upload.expected_sha256} given", field="sha256")
    try:
        info = inspect_iso(upload.part_path, field="file")
    except NotAnIsoImage as exc:
        reason = f"{upload.filename} is not an ISO 9660 or UDF image ({exc.reason})"
        raise InvalidInput(reason, field="file", code="not_iso_image") from None
    final = upload.final_path
    meta = IsoMetadata(os_type=upload.os_type, os_variant=upload.os_variant, architecture=upload.architecture)
    os_type, variant, architecture = _resolve_os(meta, label=info.volume_label, filename=upload.filename)
    _check_free(name=upload.name, path=str(final))
    try:
        os.link(upload.part_path, final)  # atomic, and never over an existing file
    except FileExistsError:
        raise Conflict(f"{final} appeared on the host during the upload; not overwritten", field="filename", code="file_exists") from None
    try:
        _sync_directory(final.parent)
        iso = _create(
            name=upload.name,
            path=str(final),
            size=info.size,
            file_mtime_ns=final.stat().st_mtime_ns,
            bytes_done=info.size,
            bytes_total=info.size,
            os_type=os_type,
            os_variant=variant,
            architecture=architecture,
            boot_type=info.boot_type,
            volume_label=info.volume_label,
            description=upload.description,
            tags=list(upload.tags),
            status=IsoStatus.READY,
            md5_hash=digests_md5,
            sha256_hash=digests_sha256,
            downloaded=True,  # Vapor's own file: deleted with the entry
        )
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    log.info("uploaded %s to %s (%d bytes) as %s", upload.pk, final, info.size, iso.pk)
    return iso


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(upload: IsoUpload) -> None:
    """The upload is over (finished or failed): its row, part file and hash state go."""
    with _STATES_LOCK:
        _HASH_STATES.pop(upload.pk, None)
    upload.part_path.unlink(missing_ok=True)
    IsoUpload.objects.filter(pk=upload.pk).delete()


def iso_upload_cancel(*, upload: IsoUpload) -> None:
    """Stop an upload: the row and the partial file go. A request writing it at that moment is a 409."""
    try:
        with _locked_part(upload, create=False):
            _discard(upload)
    except VaporError as exc:
        if exc.code != "upload_lost":
            raise
        _discard(upload)  # nothing written yet, or the file is gone: the row goes
    log.info("upload %s cancelled", upload.pk)
