"""ISO library rules: registration, downloads, metadata, deletion, usage.

Every entry point (API, admin, management command, task) calls these.
Background work is enqueued with `transaction.on_commit`, so a task never
sees a row that was rolled back.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from guestos import osinfo
from isos.choices import BUSY_STATUSES, IsoStatus
from isos.download import FetchPolicy, validate_url
from isos.hashing import Digests
from isos.inspect import guess_os, inspect_iso, is_iso_image
from isos.models import IsoImage, IsoTag, IsoUpload, RetiredIsoId, new_iso_id
from isos.partfile import remove_if_unowned
from isos.signals import iso_deleted
from vaporsite.errors import Conflict, InvalidInput, NotFound, VaporError
from vaporsite.paths import guard_file, require_reachable_by_qemu

log = logging.getLogger("vapor.isos")

CHECKSUM_RE = re.compile(r"^(sha256:[0-9a-fA-F]{64}|md5:[0-9a-fA-F]{32})$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_TAGS = 50  # per ISO (README, "Limits"); each tag at most 64 characters (TAG_RE)
SAFE_FILENAME_RE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class IsoMetadata:
    """What a caller may say about an ISO. Empty strings mean "not given"."""

    name: str = ""
    os_type: str = ""
    os_variant: str = ""
    architecture: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()


# --- helpers ---------------------------------------------------------------


def iso_allocate_id() -> str:
    """A fresh id that no live or deleted ISO ever had."""
    while True:
        candidate = new_iso_id()
        if not IsoImage.objects.filter(pk=candidate).exists() and not RetiredIsoId.objects.filter(pk=candidate).exists():
            return candidate


def _clean_tags(tags: tuple[str, ...] | list[str]) -> list[str]:
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags per ISO; {len(tags)} given", field="tags")
    cleaned: list[str] = []
    for raw in tags:
        tag = str(raw).strip().lower()
        if not TAG_RE.match(tag):
            raise InvalidInput(
                f"tag {raw!r} must be 1-64 lower-case letters, digits, '-' or '_', starting with a letter or digit",
                field="tags",
            )
        if tag not in cleaned:
            cleaned.append(tag)
    return cleaned


def _set_tags(iso: IsoImage, tags: list[str]) -> None:
    objs = [IsoTag.objects.get_or_create(name=tag)[0] for tag in tags]
    iso.tags.set(objs)


def _resolve_os(meta: IsoMetadata, *, label: str, filename: str) -> tuple[str, str, str]:
    """Caller's values win; the label only fills what the caller left out."""
    variant = osinfo.validate_os_variant(meta.os_variant)
    os_type, architecture = meta.os_type, meta.architecture
    if not os_type and not variant:
        guess = guess_os(label, filename)
        os_type, variant = guess.os_type, guess.os_variant
        architecture = architecture or guess.architecture
    elif not architecture:
        architecture = guess_os(label, filename).architecture
    if variant and not os_type:
        os_type = osinfo.os_type_for(variant)
    return os_type, variant, architecture


def _check_free(*, name: str, path: str) -> None:
    clash = IsoImage.objects.filter(path=path).values_list("pk", flat=True).first()
    if clash:
        raise Conflict(f"{path} is already registered as {clash}", field="path", code="path_taken", existing_id=clash)
    clash = IsoImage.objects.filter(name=name).values_list("pk", flat=True).first()
    if clash:
        raise Conflict(f"an ISO named {name!r} is already registered ({clash})", field="name", code="name_taken", existing_id=clash)


def _create(**fields: object) -> IsoImage:
    tags = fields.pop("tags")
    try:
        with transaction.atomic():
            iso = IsoImage.objects.create(id=iso_allocate_id(), **fields)
            _set_tags(iso, list(tags))  # type: ignore[call-overload]
    except IntegrityError as exc:
        # Lost a race against another request for the same name or path.
        raise Conflict(f"the name or path was registered at the same time: {exc}", code="conflict") from exc
    return iso


DOWNLOAD_TASK = "isos.tasks.download_iso"
HASH_TASK = "isos.tasks.hash_iso"


def _enqueue(func: str, iso_id: str) -> None:
    """Queue `func(iso_id)` once the transaction commits. Downloads go to their own queue
    (settings.DOWNLOAD_QUEUE, served by the second cluster `scripts/run.sh` starts), so a slow
    server never holds a worker that hashing or provisioning waits for; everything else goes
    to the default queue."""
    from django_q.tasks import async_task

    options: dict[str, str] = {"cluster": settings.DOWNLOAD_QUEUE} if func == DOWNLOAD_TASK else {}
    transaction.on_commit(lambda: async_task(func, iso_id, task_name=f"{func.rsplit('.', 1)[-1]} {iso_id}", **options))


# --- registration ----------------------------------------------------------


def iso_register_path(*, path: str, meta: IsoMetadata, digests: Digests | None = None, field: str = "path") -> IsoImage:
    """Register an ISO file already on the host.

    Registered at once; without `digests` it is `hashing` until the
    background task fills the hashes in and makes it `ready`.
    """
    resolved = guard_file(path, roots=settings.VAPOR.allowed_iso_roots, field=field, what="ISO file")
    # An ISO QEMU cannot open is no use to any VM: refused before it enters the library.
    require_reachable_by_qemu(resolved, user=settings.VAPOR.qemu_user, field=field)
    info = inspect_iso(resolved, field=field)
    tags = _clean_tags(meta.tags)
    os_type, variant, architecture = _resolve_os(meta, label=info.volume_label, filename=resolved.name)
    name = meta.name or resolved.name
    _check_free(name=name, path=str(resolved))
    iso = _create(
        name=name,
        path=str(resolved),
        size=info.size,
        file_mtime_ns=resolved.stat().st_mtime_ns,
        bytes_total=info.size,
        os_type=os_type,
        os_variant=variant,
        architecture=architecture,
        boot_type=info.boot_type,
        volume_label=info.volume_label,
        description=meta.description,
        tags=tags,
        status=IsoStatus.READY if digests else IsoStatus.HASHING,
        md5_hash=digests.md5 if digests else "",
        sha256_hash=digests.sha256 if digests else "",
        bytes_done=info.size if digests else 0,
    )
    if digests is None:
        _enqueue(HASH_TASK, iso.pk)
    log.info("registered %s %s (%s)", iso.pk, iso.path, iso.status)
    return iso


def _download_filename(url: str) -> str:
    base = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    safe = SAFE_FILENAME_RE.sub("_", base).strip("._") or "download"
    return safe if safe.lower().endswith(".iso") else f"{safe}.iso"


def iso_create_download(*, url: str, meta: IsoMetadata, checksum: str = "") -> IsoImage:
    """Register an ISO to be downloaded by the background worker (status `downloading`)."""
    if checksum and not CHECKSUM_RE.match(checksum):
        raise InvalidInput("must be 'sha256:' and 64 hex digits or 'md5:' and 32 hex digits", field="checksum")
    validate_url(url, FetchPolicy.from_settings())
    tags = _clean_tags(meta.tags)
    variant = osinfo.validate_os_variant(meta.os_variant)
    os_type = meta.os_type or (osinfo.os_type_for(variant) if variant else "")
    filename = _download_filename(url)
    dest = settings.VAPOR.download_dir / filename
    name = meta.name or filename
    _check_free(name=name, path=str(dest))
    if dest.exists():
        raise Conflict(
            f"{dest} already exists on the host; register it by path, or download under another file name",
            field="url",
            code="file_exists",
        )
    iso = _create(
        name=name,
        path=str(dest),
        os_type=os_type,
        os_variant=variant,
        architecture=meta.architecture,
        description=meta.description,
        tags=tags,
        status=IsoStatus.DOWNLOADING,
        source_url=url,
        expected_checksum=checksum.lower(),
        downloaded=True,
    )
    _enqueue(DOWNLOAD_TASK, iso.pk)
    log.info("download queued %s from %s", iso.pk, url)
    return iso


# --- changes ---------------------------------------------------------------

EDITABLE = ("name", "os_type", "os_variant", "architecture", "description")


def iso_update(*, iso: IsoImage, changes: dict[str, object]) -> IsoImage:
    """Change metadata. Path, source and hashes are facts about the file and stay."""
    unknown = sorted(set(changes) - {*EDITABLE, "tags"})
    if unknown:
        raise InvalidInput(f"{unknown[0]} cannot be changed", field=unknown[0], code="read_only")
    if "os_variant" in changes:
        changes["os_variant"] = osinfo.validate_os_variant(str(changes["os_variant"]))
    name = changes.get("name")
    if name and name != iso.name and IsoImage.objects.filter(name=name).exclude(pk=iso.pk).exists():
        raise Conflict(f"an ISO named {name!r} is already registered", field="name", code="name_taken")
    with transaction.atomic():
        for key in EDITABLE:
            if key in changes:
                setattr(iso, key, changes[key])
        try:
            iso.save()
        except IntegrityError as exc:
            raise Conflict(f"an ISO named {name!r} is already registered", field="name", code="name_taken") from exc
        if "tags" in changes:
            _set_tags(iso, _clean_tags(changes["tags"]))  # type: ignore[arg-type]
    return iso


def temp_path(iso: IsoImage) -> Path:
    """Where a download is written before it is verified and renamed."""
    final = Path(iso.path)
    return final.with_name(f".{final.name}.{iso.pk}.part")


def iso_delete(*, iso: IsoImage) -> list[str]:
    """Delete the entry; the file too when Vapor downloaded it. 409 while a VM uses it.

    Returns notes on what is left to do (a copy on a host that is down: removed later), from the
    receivers of `isos.signals.iso_deleted` (its copies on other hosts, `vms.services.iso_copies`).

    The row is locked first, as a VM creation locks the ISOs it attaches
    (vms.services.lifecycle._store): a VM created at the same moment either
    attaches the ISO before this check sees it (409 here) or finds the row
    gone (409 there), never an attachment to a deleted ISO.
    """
    iso_id, leftovers = iso.pk, (Path(iso.path), temp_path(iso))
    with transaction.atomic():
        if not IsoImage.objects.select_for_update().filter(pk=iso_id).exists():
            raise NotFound(f"ISO {iso_id} was deleted meanwhile")
        users = sorted(set(iso.attachments.values_list("vm__name", flat=True)))
        if users:
            raise Conflict(
                f"ISO {iso_id} is attached to {len(users)} VM(s): {', '.join(users)}; detach it or delete the VM(s) first",
                code="iso_in_use",
                vms=users,
            )
        templates = sorted(iso.templates.values_list("name", flat=True))
        if templates:
            raise Conflict(
                f"ISO {iso_id} is the install ISO of template(s) {', '.join(templates)}; change or delete the template(s) first",
                code="iso_in_use",
                templates=templates,
            )
        RetiredIsoId.objects.create(id=iso_id, name=iso.name, path=iso.path, file_deleted=iso.downloaded)
        iso.delete()
    if iso.downloaded:
        final, part = leftovers
        final.unlink(missing_ok=True)
        remove_if_unowned(part)  # a download still writing it removes it itself within seconds
    log.info("deleted %s %s (file deleted: %s)", iso_id, iso.path, iso.downloaded)
    notes: list[str] = []
    for _receiver, answer in iso_deleted.send(sender=IsoImage, iso_id=iso_id):
        notes.extend(answer or ())
    return notes


def iso_cancel(*, iso: IsoImage) -> IsoImage:
    """Stop a download. The worker notices at its next progress write (within a second, whether
    bytes flow or not) and removes its partial file; a partial file no live worker holds goes now."""
    updated = IsoImage.objects.filter(pk=iso.pk, status=IsoStatus.DOWNLOADING).update(
        status=IsoStatus.CANCELLED, error="cancelled by user", updated_at=timezone.now()
    )
    iso.refresh_from_db()
    if not updated:
        raise Conflict(f"ISO {iso.pk} is {iso.status}, not downloading: nothing to cancel", code="not_downloading")
    remove_if_unowned(temp_path(iso))
    return iso


def iso_retry(*, iso: IsoImage) -> IsoImage:
    """Start a failed or cancelled download (or hashing) again."""
    if iso.status not in (IsoStatus.FAILED, IsoStatus.CANCELLED):
        raise Conflict(f"ISO {iso.pk} is {iso.status}; only failed or cancelled ISOs can be retried", code="not_retryable")
    if iso.source_url and iso.downloaded and not Path(iso.path).exists():
        status, task = IsoStatus.DOWNLOADING, DOWNLOAD_TASK
    else:
        status, task = IsoStatus.HASHING, HASH_TASK
    with transaction.atomic():
        IsoImage.objects.filter(pk=iso.pk).update(status=status, error="", bytes_done=0, attempts=0, updated_at=timezone.now())
        _enqueue(task, iso.pk)
    iso.refresh_from_db()
    return iso


def iso_rehash(*, iso: IsoImage) -> IsoImage:
    """Hash the file again (after it was replaced or to verify it)."""
    if iso.status in BUSY_STATUSES:
        raise Conflict(f"ISO {iso.pk} is {iso.status}; wait for it to finish", code="busy")
    with transaction.atomic():
        IsoImage.objects.filter(pk=iso.pk).update(status=IsoStatus.HASHING, error="", bytes_done=0, attempts=0, updated_at=timezone.now())
        _enqueue(HASH_TASK, iso.pk)
    iso.refresh_from_db()
    return iso


def iso_record_use(*, iso: IsoImage) -> None:
    """use_count + 1 and last_used = now in one UPDATE: no lost increments."""
    IsoImage.objects.filter(pk=iso.pk).update(use_count=F("use_count") + 1, last_used=timezone.now())


def iso_fail(*, iso_id: str, error: str, expect: str) -> bool:
    """Mark failed unless the status moved on (cancelled, deleted) meanwhile."""
    log.warning("ISO %s failed: %s", iso_id, error)
    return bool(IsoImage.objects.filter(pk=iso_id, status=expect).update(status=IsoStatus.FAILED, error=error, updated_at=timezone.now()))


UPLOAD_STALE_AFTER = timedelta(hours=24)  # an upload no chunk reached for this long is removed by the janitor


def iso_cleanup(*, stale_after: timedelta, dry_run: bool = False) -> tuple[list[str], list[Path]]:
    """The janitor: a worker killed on timeout runs no `finally`.

    Marks downloads and hashing that made no progress for `stale_after` as
    failed (a live download writes its progress every second, bytes or not),
    deletes uploads no chunk reached for UPLOAD_STALE_AFTER (isos.uploads),
    then removes partial files that no running download or open upload owns: neither a
    downloading row or an upload names it nor a live writer holds its lock (`isos.partfile`;
    the lock settles it, since a row can be failed while its worker still runs).
    Returns (ids marked failed, files removed).
    """
    cutoff = timezone.now() - stale_after
    stale = IsoImage.objects.filter(status__in=BUSY_STATUSES, updated_at__lt=cutoff)
    stale_ids = list(stale.values_list("pk", flat=True))
    if not dry_run and stale_ids:
        minutes = int(stale_after.total_seconds() // 60)
        log.warning("ISOs %s made no progress for %d minutes: failed", ", ".join(stale_ids), minutes)
        # One UPDATE, still conditional on the status and age, so a row that moved on meanwhile is left alone.
        stale.filter(pk__in=stale_ids).update(
            status=IsoStatus.FAILED, error=f"the worker stopped: no progress for {minutes} minutes; retry it", updated_at=timezone.now()
        )
    # An upload waits for its client between chunks, maybe for hours (a laptop asleep); one untouched for a day goes.
    expired = IsoUpload.objects.filter(updated_at__lt=timezone.now() - UPLOAD_STALE_AFTER)
    if not dry_run:
        for upload_id in expired.values_list("pk", flat=True):
            log.warning("upload %s untouched for %s: removed", upload_id, UPLOAD_STALE_AFTER)
        expired.delete()
    directory: Path = settings.VAPOR.download_dir
    orphans: list[Path] = []
    if directory.is_dir():
        running = IsoImage.objects.filter(status=IsoStatus.DOWNLOADING).exclude(pk__in=stale_ids).only("id", "path")
        live = {temp_path(iso) for iso in running}
        live |= {upload.part_path for upload in IsoUpload.objects.exclude(pk__in=expired.values("pk")).only("id", "filename")}
        candidates = [p for p in directory.glob(".*.part") if p not in live and p.is_file() and not os.path.islink(p)]
        orphans = [p for p in candidates if remove_if_unowned(p, dry_run=dry_run)]
    return stale_ids, orphans


# --- the ISO directories, watched ---------------------------------------------

# A file modified more recently than this may still be being written (a copy, an scp): it waits for a
# later scan. A file moved in with `mv` on the same file system, `cp -p` or `rsync -a` keeps its mtime
# and is registered at once.
SCAN_SETTLE_SECONDS = 30
# Names that writers use while a file is incomplete (Vapor's own downloads are `.NAME.ID.part`).
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp", ".temp")


@dataclass
class IsoScanReport:
    """What a scan of the ISO directories found, file by file (paths as found in the directory)."""

    registered: list[str] = field(default_factory=list)  # new: registered, hashed in the background
    unchanged: list[str] = field(default_factory=list)  # already registered, same size and mtime: not read
    changed: list[tuple[str, str]] = field(default_factory=list)  # registered, but size or mtime moved: hashed again
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not registered on purpose, and why
    errors: list[tuple[str, str]] = field(default_factory=list)  # refused, and why
    directories: int = 0

    @property
    def found(self) -> int:
        return len(self.registered) + len(self.unchanged) + len(self.changed) + len(self.skipped) + len(self.errors)

    def summary(self) -> str:
        return (
            f"{self.found} file(s) in {self.directories} ISO director{'y' if self.directories == 1 else 'ies'}: "
            f"registered {len(self.registered)}, unchanged {len(self.unchanged)}, changed {len(self.changed)}, "
            f"skipped {len(self.skipped)}, errors {len(self.errors)}"
        )


def _scan_known(iso: IsoImage, path: str, info: os.stat_result, report: IsoScanReport, *, settled: bool) -> None:
    """A file already in the library: compared by size and mtime only, never read."""
    if iso.status in BUSY_STATUSES:
        report.skipped.append((path, f"already registered as {iso.pk}, {iso.get_status_display().lower()} now"))
        return
    if iso.size is None or (iso.file_mtime_ns is None and iso.size == info.st_size):
        # Registered before mtimes were kept (or never measured): this size and mtime become the reference.
        IsoImage.objects.filter(pk=iso.pk, file_mtime_ns__isnull=True).update(file_mtime_ns=info.st_mtime_ns)
        report.unchanged.append(path)
        return
    if iso.size == info.st_size and iso.file_mtime_ns == info.st_mtime_ns:
        report.unchanged.append(path)
        return
    if not settled:
        report.skipped.append((path, f"changed since {iso.pk} was hashed and still being written; a later scan hashes it again"))
        return
    what = f"size {iso.size} -> {info.st_size} bytes" if iso.size != info.st_size else "modified since it was hashed"
    try:
        iso_rehash(iso=iso)
    except VaporError as exc:  # it turned busy meanwhile
        report.skipped.append((path, exc.message))
        return
    log.warning("ISO %s %s changed on disk (%s): hashing it again", iso.pk, iso.path, what)
    report.changed.append((path, f"{iso.pk} changed on disk ({what}): hashing it again"))


def _scan_file(
    entry: os.DirEntry[str], known: dict[str, IsoImage], seen: set[Path], report: IsoScanReport, now: float, settle: float
) -> None:
    path = entry.path
    if entry.name.startswith(".") or entry.name.lower().endswith(PARTIAL_SUFFIXES):
        report.skipped.append((path, "a partial download or hidden file"))
        return
    try:
        resolved = guard_file(path, roots=settings.VAPOR.allowed_iso_roots, field="path", what="ISO file")
        info = resolved.stat()
    except VaporError as exc:  # a symlink leading out of the allowed directories, a dangling one, a device
        report.errors.append((path, exc.message))
        return
    except OSError as exc:
        report.errors.append((path, f"cannot read: {exc.strerror or exc}"))
        return
    if resolved in seen:  # a second name (symlink) for a file this scan already saw
        return
    seen.add(resolved)
    settled = now - info.st_mtime >= settle
    iso = known.get(str(resolved))
    if iso is not None:
        _scan_known(iso, path, info, report, settled=settled)
        return
    if not settled:
        age = max(0, int(now - info.st_mtime))
        report.skipped.append((path, f"modified {age} s ago, may still be being written; a later scan registers it"))
        return
    if not is_iso_image(resolved):
        report.skipped.append((path, "not an ISO 9660 or UDF image"))
        return
    try:
        registered = iso_register_path(path=path, meta=IsoMetadata())
    except Conflict as exc:
        if exc.code == "path_taken":  # another scan registered it a moment ago
            report.unchanged.append(path)
        else:
            report.errors.append((path, exc.message))
        return
    except VaporError as exc:
        report.errors.append((path, exc.message))
        return
    report.registered.append(path)
    log.info("scan registered %s %s", registered.pk, registered.path)


def iso_scan_dirs(*, dirs: Sequence[Path] | None = None, settle_seconds: float = SCAN_SETTLE_SECONDS) -> IsoScanReport:
    """Register the ISO images that appeared in the ISO directories (settings VAPOR_ISO_DIRS, top level only).

    A file already registered is compared by size and mtime and never read when both match; one that
    changed is hashed again (its hashes no longer describe it) and reported. Not registered: hidden and
    partial files (`.part` ...), files modified in the last `settle_seconds` (probably still being
    written; a later scan takes them), files that are no ISO 9660/UDF image, symlinks leading out of
    the allowed directories. New files are registered as `iso_register_path` does and hashed in the
    background. A directory that does not exist is passed over (the defaults name three).
    """
    report = IsoScanReport()
    known = {iso.path: iso for iso in IsoImage.objects.only("id", "path", "size", "file_mtime_ns", "status")}
    seen: set[Path] = set()
    now = time.time()
    for directory in settings.VAPOR.iso_dirs if dirs is None else dirs:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            report.errors.append((str(directory), f"cannot list the directory: {exc.strerror or exc}"))
            continue
        report.directories += 1
        for entry in entries:
            if entry.is_dir():  # top level only, and never a symlink to a directory
                continue
            _scan_file(entry, known, seen, report, now, settle_seconds)
    log.info("ISO scan: %s", report.summary())
    return report
