"""What an ISO file is, read from its volume descriptors, never from its name.

Registration must refuse a file that only *claims* to be an ISO (a qcow2 or a
text file renamed ``.iso`` would make a VM boot nothing, or leak a host file
into a guest), and it records how the image boots so VM creation can choose
firmware. Both answers sit in the first sectors of the image, so this module
reads only those, with bounded reads: a 5 GB DVD costs a few kilobytes.

Layout (ECMA-119 / El Torito 1.0 / ECMA-167), in 2048-byte sectors:

* sector 16 onwards: the ISO 9660 volume descriptor set (type byte, ``CD001``,
  version), ended by a terminator (type 255). Type 1 is the primary volume
  descriptor (label at bytes 40..72), type 0 with the system id
  ``EL TORITO SPECIFICATION`` points at the boot catalog.
* after it (or from sector 16 for a UDF-only image): the UDF volume
  recognition sequence ``BEA01``, ``NSR02``/``NSR03``, ``TEA01``.

:func:`guess_os` turns a volume label (and the file name as a fallback) into
OS fields; it only ever proposes an ``os_variant`` the installed osinfo-db
knows.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from guestos import osinfo
from guestos.choices import OsType
from isos.choices import Architecture, BootType
from vaporsite.errors import InvalidInput

SECTOR: Final = 2048
FIRST_DESCRIPTOR: Final = 16
MAX_DESCRIPTORS: Final = 64  # real images use 3-6; the bound only stops a hostile file from making us read far
MAX_CATALOG_SECTORS: Final = 4  # 256 catalog entries, far more than any image carries
EL_TORITO_ID: Final = b"EL TORITO SPECIFICATION"
PLATFORM_BIOS: Final = 0x00
PLATFORM_EFI: Final = 0xEF
BOOTABLE: Final = 0x88
SECTION_MORE: Final = 0x90
SECTION_LAST: Final = 0x91
ENTRY_EXTENSION: Final = 0x44
UDF_NSR: Final = frozenset({b"NSR02", b"NSR03"})
UDF_OTHER: Final = frozenset({b"BEA01", b"TEA01", b"BOOT2", b"CDW02"})


class NotAnIsoImage(InvalidInput):
    """The file holds no ISO 9660 or UDF volume descriptors (whatever its name says)."""

    code = "not_iso_image"

    def __init__(self, path: Path, reason: str, *, field: str | None = "path") -> None:
        super().__init__(f"{path} is not an ISO 9660 or UDF image ({reason})", field=field)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class IsoInfo:
    volume_label: str
    boot_type: str
    filesystems: tuple[str, ...]
    size: int


@dataclass(frozen=True)
class _Descriptors:
    label: str | None
    catalog_lba: int | None
    iso9660: bool
    udf: bool


def is_iso_image(path: Path) -> bool:
    """True for an ISO 9660 or UDF image; False for anything else, including unreadable paths."""
    try:
        inspect_iso(path)
    except (NotAnIsoImage, OSError):
        return False
    return True


def inspect_iso(path: Path, *, field: str = "path") -> IsoInfo:
    """Label, boot type and filesystems of the image at `path`; :class:`NotAnIsoImage` (naming `field`) otherwise.

    The caller has already checked the path (``vaporsite.paths.guard_file``);
    a file that cannot be opened here is reported as not an image.
    """
    try:
        with open(path, "rb") as image:
            size = os.fstat(image.fileno()).st_size
            minimum = (FIRST_DESCRIPTOR + 1) * SECTOR
            if size < minimum:
                raise NotAnIsoImage(path, f"{size} bytes, shorter than the {minimum} bytes that hold the volume descriptors", field=field)
            descriptors = _read_descriptors(image, path, field)
            boot_type = _boot_type(image, descriptors.catalog_lba, size) if descriptors.catalog_lba is not None else BootType.NONE
    except OSError as exc:
        raise NotAnIsoImage(path, f"cannot be read: {exc.strerror or exc}", field=field) from None
    filesystems = tuple(name for name, present in (("iso9660", descriptors.iso9660), ("udf", descriptors.udf)) if present)
    return IsoInfo(volume_label=descriptors.label or "", boot_type=str(boot_type), filesystems=filesystems, size=size)


def _read_descriptors(image: BinaryIO, path: Path, field: str) -> _Descriptors:
    image.seek(FIRST_DESCRIPTOR * SECTOR)
    data = image.read(MAX_DESCRIPTORS * SECTOR)
    label: str | None = None
    catalog_lba: int | None = None
    iso9660_set = udf_seen_bea = udf = False
    for offset in range(0, len(data) - SECTOR + 1, SECTOR):
        kind, ident = data[offset], bytes(data[offset + 1 : offset + 6])
        if ident == b"CD001":
            iso9660_set = True
            if kind == 1 and label is None:
                label = _text(data[offset + 40 : offset + 72])
            elif kind == 0 and data[offset + 7 : offset + 7 + len(EL_TORITO_ID)] == EL_TORITO_ID:
                (catalog_lba,) = struct.unpack_from("<I", data, offset + 0x47)
            # A terminator (255) ends the ISO set; a UDF bridge's recognition sequence may follow.
        elif ident in UDF_NSR:
            udf = udf or udf_seen_bea
        elif ident in UDF_OTHER:
            udf_seen_bea = udf_seen_bea or ident == b"BEA01"
            if ident == b"TEA01":
                break
        else:
            break  # the descriptor area ends at the first sector that is neither
    if label is None and not udf:
        reason = "ISO 9660 descriptors without a primary volume descriptor" if iso9660_set else "no volume descriptor at sector 16"
        raise NotAnIsoImage(path, reason, field=field)
    return _Descriptors(label=label, catalog_lba=catalog_lba if label is not None else None, iso9660=label is not None, udf=udf)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip(" \x00")


def _boot_type(image: BinaryIO, catalog_lba: int, size: int) -> BootType:
    """Platforms with a bootable El Torito entry -> BootType; a damaged catalog counts as not bootable.

    The catalog is a list of 32-byte records: a validation entry (header 1,
    platform id, key 55 AA, words summing to 0), the initial entry (for the
    validation entry's platform), then section headers (0x90 more follow,
    0x91 last) each with a platform id and a count of entries, which may be
    followed by extension records (0x44) that do not count.
    """
    if catalog_lba * SECTOR >= size:
        return BootType.NONE
    image.seek(catalog_lba * SECTOR)
    catalog = image.read(MAX_CATALOG_SECTORS * SECTOR)
    records = [catalog[i : i + 32] for i in range(0, len(catalog) - 31, 32)]
    if len(records) < 2 or not _valid_validation_entry(records[0]):
        return BootType.NONE
    platforms: set[int] = set()
    if records[1][0] == BOOTABLE:
        platforms.add(records[0][1])
    index = 2
    while index < len(records) and records[index][0] in (SECTION_MORE, SECTION_LAST):
        header = records[index]
        platform, (count,) = header[1], struct.unpack_from("<H", header, 2)
        index += 1
        seen = 0
        # Extension records belong to the entry before them, so they are skipped even after the last counted entry.
        while index < len(records) and (seen < count or records[index][0] == ENTRY_EXTENSION):
            record = records[index]
            index += 1
            if record[0] == ENTRY_EXTENSION:
                continue
            seen += 1
            if record[0] == BOOTABLE:
                platforms.add(platform)
        if header[0] == SECTION_LAST:
            break
    bios, efi = PLATFORM_BIOS in platforms, PLATFORM_EFI in platforms
    if bios and efi:
        return BootType.HYBRID
    if bios:
        return BootType.BIOS
    return BootType.UEFI if efi else BootType.NONE


def _valid_validation_entry(record: bytes) -> bool:
    if record[0] != 0x01 or record[30:32] != b"\x55\xaa":
        return False
    return sum(struct.unpack("<16H", record)) & 0xFFFF == 0


# --- OS guess from the label --------------------------------------------------------------------------


@dataclass(frozen=True)
class OsGuess:
    os_type: str
    os_variant: str
    architecture: str


_B = r"(?<![a-z0-9])"  # token start
_E = r"(?:v\d+)?(?![a-z0-9])"  # token end; "x64v1" is how Microsoft names re-spun downloads
_ARCH_TOKENS: Final = {
    "x86_64": r"x86[_-]64|amd64|x64",
    "aarch64": r"aarch64|arm64",
    "i686": r"i[3-6]86|x86|x32",
    "ppc64le": r"ppc64le|ppc64el",
    "s390x": r"s390x",
    "riscv64": r"riscv64",
}
_ARCH_RE: Final = re.compile(_B + "(" + "|".join(f"(?P<{arch}>{alts})" for arch, alts in _ARCH_TOKENS.items()) + ")" + _E)
_WINDOWS_ARCH_RE: Final = re.compile(r"(?<![a-z0-9])(x64|x86|a64|arm64)fre")
_WINDOWS_ARCH: Final = {"x64": Architecture.X86_64, "x86": Architecture.I686, "a64": Architecture.AARCH64, "arm64": Architecture.AARCH64}
# Microsoft's install media labels: CCCOMA_X64FRE_EN-US_DV9, SSS_X64FREE_EN-US_DV9, GRMCULFRER_EN_DVD.
_WINDOWS_LABEL_RE: Final = re.compile(r"(?:^|_)[a-z0-9]*?(?:x64|x86|a64|arm64)?fre[a-z]{0,2}_[a-z]{2}(?:-[a-z]{2,4})?_dvd?\d*$")
_WINDOWS_WORD_RE: Final = re.compile(r"(?<![a-z])win(?:dows)?(?:[ _-]?(?:server|\d|xp|vista)|(?![a-z]))")
_WINDOWS_DESKTOP_RE: Final = re.compile(r"(?<![a-z])win(?:dows)?[ _-]?(11|10|8\.1|8|7|xp|vista)(?![0-9.])")
_WINDOWS_SERVER_RE: Final = re.compile(r"server[ _-]?(20\d\d)(?:[ _-]?(r2))?")
# Evaluation media name the build, not the year: 20348.169.210806-2348.fe_release_svc_refresh_SERVER_EVAL_x64FRE_en-us.iso
_WINDOWS_SERVER_BUILDS: Final = {"26100": "win2k25", "20348": "win2k22", "17763": "win2k19", "14393": "win2k16", "9600": "win2k12r2"}


def _versioned(prefix: str, *, minor: bool = True) -> Callable[[re.Match[str]], list[str]]:
    """Candidates from most to least specific: rocky9.3 (if osinfo has it), then rocky9."""

    def candidates(match: re.Match[str]) -> list[str]:
        major, rest = match.group(1), match.groups()[1:]
        found = [f"{prefix}{major}.{rest[0]}"] if minor and rest and rest[0] else []
        return [*found, f"{prefix}{major}"]

    return candidates


def _exact(template: str) -> Callable[[re.Match[str]], list[str]]:
    return lambda match: [template.format(*match.groups())]


_V = r"\D*?(\d+)(?:[.-](\d+))?"  # a major version, optionally .minor or -minor (Rocky-9-3)
_LINUX_RULES: Final[tuple[tuple[re.Pattern[str], str, Callable[[re.Match[str]], list[str]]], ...]] = (
    (re.compile(r"ubuntu\D*?(\d{1,2})\.(\d{2})"), OsType.LINUX, _exact("ubuntu{}.{}")),
    (re.compile(r"debian" + _V), OsType.LINUX, _versioned("debian")),
    (re.compile(r"fedora\D*?(\d+)"), OsType.LINUX, _exact("fedora{}")),
    (re.compile(r"rocky" + _V), OsType.LINUX, _versioned("rocky")),
    (re.compile(r"alma[ _-]?linux" + _V), OsType.LINUX, _versioned("almalinux")),
    (re.compile(r"centos[ _-]*stream\D*?(\d+)"), OsType.LINUX, _exact("centos-stream{}")),
    (re.compile(r"centos" + _V), OsType.LINUX, _versioned("centos")),
    (re.compile(r"rhel" + _V), OsType.LINUX, _versioned("rhel")),
    (re.compile(r"opensuse.*?tumbleweed"), OsType.LINUX, _exact("opensusetumbleweed")),
    (re.compile(r"opensuse\D*?(\d+)\.(\d+)"), OsType.LINUX, _exact("opensuse{}.{}")),
    (re.compile(r"alpine\D*?(\d+)\.(\d+)"), OsType.LINUX, _exact("alpinelinux{}.{}")),
    (re.compile(r"(?<![a-z])arch(?:linux)?(?![a-z])"), OsType.LINUX, _exact("archlinux")),
    (re.compile(r"freebsd\D*?(\d+)[._](\d+)"), OsType.BSD, _exact("freebsd{}.{}")),
    (re.compile(r"^(\d+)_(\d+)_release_"), OsType.BSD, _exact("freebsd{}.{}")),  # FreeBSD's own label: 14_0_RELEASE_AMD64_CD
    (re.compile(r"openbsd\D*?(\d+)\.(\d+)"), OsType.BSD, _exact("openbsd{}.{}")),
    (re.compile(r"netbsd\D*?(\d+)[._](\d+)"), OsType.BSD, _exact("netbsd{}.{}")),
)
# Names that identify the OS but carry no version osinfo could use.
_BARE_RULES: Final = (
    (re.compile(r"ubuntu|debian|fedora|rocky|almalinux|centos|opensuse|alpine|linux"), OsType.LINUX),
    (re.compile(r"freebsd|openbsd|netbsd|dragonfly"), OsType.BSD),
)


def guess_os(label: str, filename: str = "", *, osinfo_dir: Path | None = None) -> OsGuess:
    """OS type, osinfo short id and architecture suggested by a volume label, then by the file name.

    The label is asked first because it is what the vendor wrote; the file
    name fills what it leaves open (Windows 10 and 11 media share labels, the
    download name says which). A variant is only returned when osinfo-db knows
    it, so the guess always passes ``osinfo.validate_os_variant``.
    """
    os_type = variant = architecture = ""
    for text in (label, Path(filename).name if filename else ""):
        lowered = text.strip().lower()
        if not lowered:
            continue
        architecture = architecture or _guess_architecture(lowered)
        found_type, candidates = _guess_system(_ARCH_RE.sub(" ", lowered))
        if not found_type or (os_type and found_type != os_type):
            continue
        os_type = found_type
        variant = variant or next((c for c in candidates if osinfo.is_known(c, osinfo_dir)), "")
    return OsGuess(os_type=os_type, os_variant=variant, architecture=architecture)


def _guess_architecture(text: str) -> str:
    match = _ARCH_RE.search(text)
    if match:
        return next(arch for arch, value in match.groupdict().items() if value)
    windows = _WINDOWS_ARCH_RE.search(text)
    return str(_WINDOWS_ARCH[windows.group(1)]) if windows else ""


def _guess_system(text: str) -> tuple[str, list[str]]:
    """(os_type, candidate short ids, most specific first) for lowered text with the architecture removed."""
    if any(pattern.search(text) for pattern in (_WINDOWS_LABEL_RE, _WINDOWS_WORD_RE, _WINDOWS_ARCH_RE)):
        return OsType.WINDOWS.value, _windows_candidates(text)
    for pattern, os_type, build in _LINUX_RULES:
        match = pattern.search(text)
        if match:
            return str(os_type), build(match)
    for pattern, os_type in _BARE_RULES:
        if pattern.search(text):
            return str(os_type), []
    return "", []


def _windows_candidates(text: str) -> list[str]:
    server = _WINDOWS_SERVER_RE.search(text)
    if server:
        return [f"win2k{server.group(1)[2:]}{server.group(2) or ''}"]
    if "server" in text:
        build = re.match(r"(\d{4,5})\.", text)
        if build and build.group(1) in _WINDOWS_SERVER_BUILDS:
            return [_WINDOWS_SERVER_BUILDS[build.group(1)]]
        return []
    desktop = _WINDOWS_DESKTOP_RE.search(text)
    return [f"win{desktop.group(1)}"] if desktop else []
