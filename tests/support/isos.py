"""Small real disc images for tests, built on the spot.

Inspection, registration and resolution tests need files that *are* ISO
images (not mocks of the reader), with known labels and El Torito boot
catalogs. ``xorriso -as mkisofs`` builds one in ~0.1 s; the boot "images" are
a few random bytes because nothing boots them, only the catalog matters.

Every function that builds a file takes `dest` as the file to write, or an
existing directory to write a default-named file into, and returns the path
written. `register_ready` puts a built file in the library, as a scan would.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isos.models import IsoImage

BOOT_KINDS = ("none", "bios", "uefi", "hybrid")
SECTOR = 2048
MAX_LABEL = 32  # ECMA-119 volume identifier field; xorriso refuses longer

_BOOT_ARGS = {
    "none": [],
    "bios": ["-c", "boot/boot.cat", "-b", "boot/bios.img", "-no-emul-boot", "-boot-load-size", "4"],
    "uefi": ["-c", "boot/boot.cat", "-e", "boot/efi.img", "-no-emul-boot"],
    "hybrid": [
        *("-c", "boot/boot.cat", "-b", "boot/bios.img", "-no-emul-boot", "-boot-load-size", "4"),
        *("-eltorito-alt-boot", "-e", "boot/efi.img", "-no-emul-boot"),
    ],
}


def _target(dest: Path, default_name: str) -> Path:
    dest = Path(dest)
    target = dest / default_name if dest.is_dir() else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-") or "image"


def make_iso(
    dest: Path,
    *,
    label: str = "TESTISO",
    boot: str = "none",
    size_padding: int = 0,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Build an ISO 9660 image with volume id `label` and the El Torito entries `boot` asks for.

    ``bios``: one x86 no-emulation entry; ``uefi``: one EFI entry only;
    ``hybrid``: both (BIOS initial entry, EFI in a section). `files` maps
    paths inside the image to their contents. `size_padding` appends that many
    zero bytes (sparse) after the image, for tests about sizes.
    """
    if boot not in BOOT_KINDS:
        raise ValueError(f"boot must be one of {', '.join(BOOT_KINDS)}, not {boot!r}")
    if len(label.encode()) > MAX_LABEL:
        raise ValueError(f"label {label!r} is longer than the {MAX_LABEL} bytes a volume id holds")
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise RuntimeError("xorriso is not installed (apt-get install xorriso)")
    target = _target(dest, f"{_slug(label)}.iso")
    with tempfile.TemporaryDirectory(prefix="isofactory-") as staging_name:
        staging = Path(staging_name)
        contents = {"README.TXT": f"test image {label}\n".encode(), **(files or {})}
        if boot in ("bios", "hybrid"):
            contents["boot/bios.img"] = b"\xfa\xf4" + b"BIOS" * 510  # 2 KiB: cli; hlt; then filler
        if boot in ("uefi", "hybrid"):
            contents["boot/efi.img"] = b"MZ" + b"EFI!" * 1023
        for name, data in contents.items():
            path = staging / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        command = [xorriso, "-as", "mkisofs", "-quiet", "-V", label, "-o", str(target), *_BOOT_ARGS[boot], str(staging)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"xorriso failed ({result.returncode}): {result.stderr.strip()}")
    if size_padding:
        with open(target, "r+b") as image:
            image.truncate(target.stat().st_size + size_padding)
    return target


def make_udf_bridge_iso(dest: Path, *, label: str = "BRIDGE") -> Path:
    """An ISO 9660 + UDF 2.60 bridge image (the layout of Windows media), written with pycdlib."""
    import pycdlib

    target = _target(dest, f"{_slug(label)}.iso")
    image = pycdlib.PyCdlib()
    image.new(interchange_level=3, vol_ident=label, udf="2.60")
    data = b"udf bridge test image\n"
    image.add_fp(io.BytesIO(data), len(data), "/README.TXT;1", udf_path="/README.TXT")
    try:
        image.write(str(target))
    finally:
        image.close()
    return target


def make_udf_only_image(dest: Path) -> Path:
    """A UDF-only image as far as detection goes: sectors 0-15 zero, then BEA01, NSR02, TEA01.

    No ISO 9660 descriptor at all, which is what separates it from the
    bridge images every real-world disc uses.
    """
    target = _target(dest, "udf-only.img")
    sectors = bytearray(32 * SECTOR)
    for index, ident in enumerate((b"BEA01", b"NSR02", b"TEA01"), start=16):
        sectors[index * SECTOR : index * SECTOR + 7] = b"\x00" + ident + b"\x01"
    target.write_bytes(bytes(sectors))
    return target


def make_non_iso(dest: Path, content: bytes = b"hello") -> Path:
    """A file with the given bytes and nothing else (named ``.iso`` when `dest` is a directory, to show names are ignored)."""
    target = _target(dest, "not-an-image.iso")
    target.write_bytes(content)
    return target


# --- osinfo-db ------------------------------------------------------------------------------------------

# (short ids, os id, family, distro): enough for every guess_os example, whatever osinfo-db the host has.
STANDARD_OSES: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (("ubuntu22.04", "ubuntujammy"), "http://ubuntu.com/ubuntu/22.04", "linux", "ubuntu"),
    (("ubuntu22.10",), "http://ubuntu.com/ubuntu/22.10", "linux", "ubuntu"),
    (("ubuntu24.04",), "http://ubuntu.com/ubuntu/24.04", "linux", "ubuntu"),
    (("debian12", "debianbookworm"), "http://debian.org/debian/12", "linux", "debian"),
    (("fedora39",), "http://fedoraproject.org/fedora/39", "linux", "fedora"),
    (("rocky9",), "http://rockylinux.org/rocky/9", "linux", "rocky"),
    (("almalinux9",), "http://almalinux.org/almalinux/9", "linux", "almalinux"),
    (("centos-stream9",), "http://centos.org/centos-stream/9", "linux", "centos"),
    (("opensuse15.5",), "http://opensuse.org/opensuse/15.5", "linux", "opensuse"),
    (("alpinelinux3.17",), "http://alpinelinux.org/alpinelinux/3.17", "linux", "alpinelinux"),
    (("archlinux",), "http://archlinux.org/archlinux/rolling", "linux", "archlinux"),
    (("win10",), "http://microsoft.com/win/10", "winnt", "win"),
    (("win11",), "http://microsoft.com/win/11", "winnt", "win"),
    (("win2k22",), "http://microsoft.com/win/2k22", "winnt", "win"),
    (("freebsd14.0",), "http://freebsd.org/freebsd/14.0", "freebsd", "freebsd"),
    (("haiku-r1beta4",), "http://haiku-os.org/haiku/r1beta4", "haiku", "haiku"),
)


def make_osinfo_db(
    dest: Path,
    oses: tuple[tuple[tuple[str, ...], str, str, str], ...] = STANDARD_OSES,
    *,
    version: str = "20240101",
) -> Path:
    """Write a miniature osinfo-db (``VERSION`` and ``os/<vendor>/<name>.xml``) under `dest`; returns `dest`.

    Tests about OS guessing must not depend on which osinfo-db release the
    host happens to have (Debian 12's knows neither debian12 nor fedora39).
    The XML is built with lxml, the same shape the real files have.
    """
    from lxml import etree

    dest = Path(dest)
    (dest / "os").mkdir(parents=True, exist_ok=True)
    for ids, os_id, family, distro in oses:
        root = etree.Element("libosinfo", version="0.0.1")
        os_element = etree.SubElement(root, "os", id=os_id)
        for short_id in ids:
            etree.SubElement(os_element, "short-id").text = short_id
        etree.SubElement(os_element, "name").text = ids[0]
        etree.SubElement(os_element, "family").text = family
        etree.SubElement(os_element, "distro").text = distro
        vendor = os_id.split("/")[2]
        xml_file = dest / "os" / vendor / f"{_slug(ids[0])}.xml"
        xml_file.parent.mkdir(parents=True, exist_ok=True)
        xml_file.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
    (dest / "VERSION").write_text(version)
    return dest


def register_ready(path: Path, **meta: Any) -> IsoImage:
    """Register an ISO file through the library's service, hashed on the spot: the ready row a scan leaves.

    `meta` are IsoMetadata fields (name, os_variant, tags, ...).
    """
    from isos.hashing import hash_file
    from isos.services import IsoMetadata, iso_register_path

    return iso_register_path(path=str(path), meta=IsoMetadata(**meta), digests=hash_file(path))
