"""The osinfo-db catalogue: which ``os_variant`` short ids exist, and what kind of OS each is.

``os_variant`` ends up in the domain's libosinfo metadata and drives the
defaults virt-install and friends pick, so a typo ("ubuntu22") must be refused
at the API rather than silently stored. The database is the one the
``osinfo-db`` package installs (``/usr/share/osinfo``), read with lxml the
first time it is needed and kept in memory: ~800 small XML files take a few
hundred milliseconds to parse, far too slow to repeat per request.

The directory comes from ``settings.VAPOR.osinfo_dir`` at call time (tests swap
it); every function also takes it explicitly so callers without Django
settings (and tests) can point at another catalogue.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from guestos.choices import OsType
from vaporsite.errors import InvalidInput
from vaporsite.safexml import DocumentError, parse_file

logger = logging.getLogger("vapor.guestos")

MAX_SUGGESTIONS: Final = 5
WINDOWS_FAMILIES: Final = frozenset({"winnt", "win9x", "win16"})
WINDOWS_DISTROS: Final = frozenset({"win", "winnt"})


@dataclass(frozen=True)
class OsEntry:
    """One ``<os>`` element: enough to classify it, nothing more is kept."""

    os_id: str
    family: str
    distro: str
    name: str = ""  # the English <name>, e.g. "Ubuntu 22.04 LTS"
    short_id: str = ""  # the OS's first <short-id>; the others are aliases (ubuntujammy)


def configured_dir() -> Path:
    """The osinfo-db directory from the settings, read now (not at import) so tests can swap it."""
    from django.conf import settings

    return Path(settings.VAPOR.osinfo_dir)


def _resolve(directory: Path | None) -> Path:
    return configured_dir() if directory is None else Path(directory)


def is_installed(directory: Path | None = None) -> bool:
    """True when `directory` looks like an osinfo-db (it has the ``os/`` tree)."""
    return (_resolve(directory) / "os").is_dir()


def _stamp(directory: Path) -> int:
    """Changes when the package is upgraded, so a long-running worker picks up the new catalogue."""
    for candidate in (directory / "VERSION", directory / "os"):
        try:
            return candidate.stat().st_mtime_ns
        except OSError:
            continue
    return 0


@functools.lru_cache(maxsize=8)
def _load(directory: Path, stamp: int) -> MappingProxyType[str, OsEntry]:
    """Parse every ``os/<vendor>/<name>.xml`` into short id -> entry.

    `stamp` is only part of the cache key. A file that does not parse is
    logged and skipped: one damaged file must not make every variant unknown.
    """
    del stamp
    catalogue: dict[str, OsEntry] = {}
    for xml_file in sorted((directory / "os").glob("*/*.xml")):
        try:
            # Trusted system data, still read by the parser that refuses entities and the network.
            root = parse_file(xml_file)
        except (OSError, DocumentError) as exc:
            logger.warning("skipping unreadable osinfo-db file %s: %s", xml_file, exc)
            continue
        for os_element in root.iterfind("os"):
            entry = OsEntry(
                os_id=os_element.get("id") or "",
                family=(os_element.findtext("family") or "").strip().lower(),
                distro=(os_element.findtext("distro") or "").strip().lower(),
                name=_english_name(os_element),
                short_id=(os_element.findtext("short-id") or "").strip(),
            )
            for short_id_element in os_element.iterfind("short-id"):
                short_id = (short_id_element.text or "").strip()
                if short_id:
                    catalogue.setdefault(short_id, entry)
    return MappingProxyType(catalogue)


def _english_name(os_element: object) -> str:
    """The <name> without xml:lang (the files also carry translations)."""
    for name in os_element.iterfind("name"):  # type: ignore[attr-defined]
        if not name.get("{http://www.w3.org/XML/1998/namespace}lang"):
            return (name.text or "").strip()
    return ""


def _catalogue(directory: Path | None) -> MappingProxyType[str, OsEntry]:
    """Entries of an installed database; empty (and not cached) when it is missing, so installing it later works."""
    resolved = _resolve(directory)
    if not (resolved / "os").is_dir():
        return MappingProxyType({})
    return _load(resolved, _stamp(resolved))


def short_ids(directory: Path | None = None) -> frozenset[str]:
    """Every ``<short-id>`` in the database (empty when it is not installed)."""
    return frozenset(_catalogue(directory))


def is_known(short_id: str, directory: Path | None = None) -> bool:
    return bool(short_id) and short_id in _catalogue(directory)


def os_id_for(short_id: str, directory: Path | None = None) -> str:
    """The libosinfo URI of a short id ("ubuntu22.04" -> "http://ubuntu.com/ubuntu/22.04"); "" if unknown."""
    entry = _catalogue(directory).get(short_id)
    return entry.os_id if entry else ""


def os_type_for(short_id: str, directory: Path | None = None) -> str:
    """Map a short id to our coarse :class:`OsType`; ``""`` for an id the database does not have.

    osinfo-db has no single field for this: Windows is spread over three
    families (winnt, win9x, win16), the BSDs each have their own family, and a
    couple of Linux entries lack ``<family>``, so the distro and the OS id
    (``http://microsoft.com/win/11``) are looked at as well.
    """
    entry = _catalogue(directory).get(short_id)
    if entry is None:
        return OsType.UNKNOWN.value
    if entry.family in WINDOWS_FAMILIES or entry.distro in WINDOWS_DISTROS or entry.os_id.startswith("http://microsoft.com/win"):
        return OsType.WINDOWS.value
    if entry.family.endswith("bsd") or entry.distro.endswith("bsd"):
        return OsType.BSD.value
    if entry.family == "linux":
        return OsType.LINUX.value
    return OsType.OTHER.value


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort ubuntu9.04 before ubuntu22.04, as a person would."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]


def suggestions(value: str, directory: Path | None = None, limit: int = MAX_SUGGESTIONS) -> list[str]:
    """Close short ids for an unknown `value`: ids it is a prefix of first, otherwise difflib's best.

    Prefixes come first because the usual mistake is a missing version part
    ("ubuntu22"), for which difflib alone ranks ubuntu20.04 as high as ubuntu22.10.
    """
    known = short_ids(directory)
    wanted = value.strip().lower()
    if not wanted:
        return []
    by_lower = {short_id.lower(): short_id for short_id in known}
    if wanted in by_lower:
        return [by_lower[wanted]]
    prefixed = sorted((short_id for short_id in known if short_id.lower().startswith(wanted)), key=_natural_key)
    if prefixed:
        return prefixed[:limit]
    close = difflib.get_close_matches(wanted, list(by_lower), n=limit, cutoff=0.75)
    return [by_lower[match] for match in close]


def validate_os_variant(value: str, *, field: str = "os_variant", directory: Path | None = None) -> str:
    """Return `value` when it is ``""`` or an osinfo-db short id, else raise :class:`InvalidInput`.

    A missing database is an error, not a pass: accepting anything would store
    variants nobody checked, and the system checks already tell the operator
    to install the package.
    """
    if value == "":
        return value
    resolved = _resolve(directory)
    if not is_installed(resolved):
        raise InvalidInput(
            f"cannot check {value!r}: osinfo-db is not installed ({resolved / 'os'} does not exist; apt-get install osinfo-db)",
            field=field,
            code="osinfo_db_missing",
        )
    if is_known(value, resolved):
        return value
    close = suggestions(value, resolved)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; the known ids are the <short-id> entries under {resolved / 'os'}"
    raise InvalidInput(
        f"{value!r} is not an osinfo-db short id{hint}",
        field=field,
        code="unknown_os_variant",
        suggestions=close,
    )


@dataclass(frozen=True)
class OsVariant:
    """A short id offered to a person choosing an OS variant, with the OS's name."""

    short_id: str
    name: str


def search(term: str, directory: Path | None = None, limit: int = 20) -> list[OsVariant]:
    """Short ids whose id or English name holds every word of `term` (case-insensitive), for a search box.

    "ubu" finds ubuntu22.04, "ubuntu 22" finds ubuntu22.04 and ubuntu22.10,
    "windows 11" finds win11 by its name. Ids that start with the first word
    come first, aliases (ubuntujammy) after the OS's own ids, each group
    newest first (ubuntu24.04 before ubuntu9.04, as a person sorts them).
    """
    words = term.lower().split()
    found: list[tuple[str, OsEntry]] = []
    for short_id, entry in _catalogue(directory).items():
        haystack = f"{short_id} {entry.name}".lower()
        if all(word in haystack for word in words):
            found.append((short_id, entry))
    found.sort(key=lambda item: _natural_key(item[0]), reverse=True)
    found.sort(key=lambda item: (not (words and item[0].lower().startswith(words[0])), item[0] != item[1].short_id))
    return [OsVariant(short_id, entry.name) for short_id, entry in found[:limit]]
