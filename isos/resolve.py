"""Turn an ISO reference from a request into a library entry.

The spec's order, first match wins:

1. ``id``       - a library id (``iso-`` + 12 hex);
2. ``name``     - a library name: exact, else ignoring case and a trailing
                  ``.iso`` (more than one such match is ambiguous);
3. ``path``     - an absolute path inside the allowed ISO roots;
4. ``filename`` - a bare file name, looked for in ``VAPOR_ISO_DIRS`` in
                  order and among the library's files. Two different files
                  with that name are ambiguous: Vapor will not guess which
                  installer a VM boots.

A path or file name that is not in the library yet is registered on the way
(status ``hashing``), so its use is tracked like any other.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db.models import Q

from isos.choices import IsoStatus
from isos.inspect import inspect_iso
from isos.models import IsoImage, RetiredIsoId
from isos.services import IsoMetadata, iso_register_path
from vaporsite.errors import Conflict, InvalidInput, NotFound
from vaporsite.paths import guard_file, require_reachable_by_qemu

ID_RE = re.compile(r"^iso-[0-9a-f]{12}$")
NAME_MAX = 255  # bytes in one file name on Linux file systems


class ResolveRule:
    ID = "id"
    NAME = "name"
    PATH = "path"
    FILENAME = "filename"


@dataclass(frozen=True)
class ResolvedIso:
    iso: IsoImage
    rule: str
    registered: bool = False  # True when the file was added to the library by this call


def iso_resolve(ref: str, *, field: str = "iso_path", register: bool = True) -> ResolvedIso:
    """`register=False` (dry runs) returns an unsaved entry instead of registering."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput("must be an ISO id, name, absolute path or file name", field=field)
    ref = ref.strip()
    if ID_RE.match(ref):
        iso = IsoImage.objects.filter(pk=ref).first()
        if iso:
            return ResolvedIso(iso, ResolveRule.ID)
        if RetiredIsoId.objects.filter(pk=ref).exists():
            raise NotFound(f"ISO {ref} was deleted from the library", field=field, code="iso_deleted")
    by_name = _by_name(ref, field)
    if by_name:
        return ResolvedIso(by_name, ResolveRule.NAME)
    if ref.startswith("/"):
        return _by_path(ref, field, register)
    if "/" in ref or ref in {".", ".."}:
        raise InvalidInput(f"{ref!r} is neither an absolute path nor a plain file name", field=field)
    if "\x00" in ref or len(os.fsencode(ref)) > NAME_MAX:
        # Checked here: the lookup's stat() raises ENAMETOOLONG rather than answering "no such file".
        raise InvalidInput(f"a file name holds at most {NAME_MAX} bytes and no NUL", field=field)
    return _by_filename(ref, field, register)


def iso_resolve_ready(ref: str, *, field: str = "iso_path", register: bool = True) -> ResolvedIso:
    """Resolve, and insist the ISO can be attached now (409 otherwise).

    A file registered by this very call is complete (it was inspected) and
    only its checksums are still being computed, so it may be attached.
    """
    resolved = iso_resolve(ref, field=field, register=register)
    require_ready(resolved, field=field)
    return resolved


def require_ready(resolved: ResolvedIso, *, field: str) -> None:
    """409 unless the resolved ISO can be attached now (see `iso_resolve_ready`)."""
    iso = resolved.iso
    if iso.status != IsoStatus.READY and not resolved.registered:
        progress = f" ({iso.progress:.0f}%)" if iso.progress is not None else ""
        reason = f": {iso.error}" if iso.error else ""
        raise Conflict(
            f"ISO {iso.pk} ({iso.name}) is {iso.status}{progress}{reason}; only ready ISOs can be attached",
            field=field,
            code="iso_not_ready",
        )


def _by_name(ref: str, field: str) -> IsoImage | None:
    exact = IsoImage.objects.filter(name=ref).first()
    if exact:
        return exact
    stem = ref[:-4] if ref.lower().endswith(".iso") else ref
    loose = list(IsoImage.objects.filter(Q(name__iexact=stem) | Q(name__iexact=f"{stem}.iso")).order_by("name")[:5])
    if len(loose) > 1:
        names = ", ".join(f"{iso.name} ({iso.pk})" for iso in loose)
        raise Conflict(f"{ref!r} matches more than one ISO name: {names}; use the id", field=field, code="iso_ambiguous")
    return loose[0] if loose else None


def _register(path: str, field: str, register: bool) -> IsoImage:
    if register:
        return iso_register_path(path=path, meta=IsoMetadata(), field=field)
    inspect_iso(Path(path), field=field)  # the same refusal a real registration would give
    return IsoImage(id="", name=Path(path).name, path=path, status=IsoStatus.HASHING)


def _by_path(ref: str, field: str, register: bool) -> ResolvedIso:
    resolved = guard_file(ref, roots=settings.VAPOR.allowed_iso_roots, field=field, what="ISO file")
    require_reachable_by_qemu(resolved, user=settings.VAPOR.qemu_user, field=field)  # a registered one too: it is about to be attached
    iso = IsoImage.objects.filter(path=str(resolved)).first()
    if iso:
        return ResolvedIso(iso, ResolveRule.PATH)
    return ResolvedIso(_register(str(resolved), field, register), ResolveRule.PATH, registered=True)


def _by_filename(ref: str, field: str, register: bool) -> ResolvedIso:
    found: dict[str, str] = {}  # real path -> where it was seen, in search order
    for directory in settings.VAPOR.iso_dirs:
        candidate = Path(directory) / ref
        if candidate.is_file():
            found.setdefault(os.path.realpath(candidate), str(candidate))
    for path in IsoImage.objects.filter(path__endswith=f"/{ref}").values_list("path", flat=True):
        if Path(path).name == ref:
            found.setdefault(path, path)
    if not found:
        searched = ", ".join(str(d) for d in settings.VAPOR.iso_dirs)
        raise NotFound(f"no ISO named {ref!r} in the library or in {searched}", field=field, code="iso_not_found")
    if len(found) > 1:
        raise Conflict(
            f"{ref!r} matches more than one file: {', '.join(found.values())}; use the id or the full path",
            field=field,
            code="iso_ambiguous",
        )
    real = next(iter(found))
    iso = IsoImage.objects.filter(path=real).first()
    if iso:
        return ResolvedIso(iso, ResolveRule.FILENAME)
    return ResolvedIso(_register(real, field, register), ResolveRule.FILENAME, registered=True)
