"""ISO inspection on real images built by xorriso/pycdlib, and the OS guess from labels.

No database: inspection reads files and osinfo-db only.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from isos.inspect import IsoInfo, NotAnIsoImage, OsGuess, _boot_type, guess_os, inspect_iso, is_iso_image
from tests.support.isos import SECTOR, STANDARD_OSES, make_iso, make_non_iso, make_osinfo_db, make_udf_bridge_iso, make_udf_only_image

REAL_OSINFO = Path("/usr/share/osinfo")


@pytest.fixture(scope="module")
def fake_osinfo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_osinfo_db(tmp_path_factory.mktemp("osinfo"))


# --- volume descriptors and boot catalogs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("boot", "label"),
    [("none", "PLAIN DATA"), ("bios", "Ubuntu-Server 22.04 LTS amd64"), ("uefi", "EFI_ONLY"), ("hybrid", "CCCOMA_X64FRE_EN-US_DV9")],
)
def test_inspect_reads_label_and_boot_type_of_real_iso(tmp_path: Path, boot: str, label: str) -> None:
    path = make_iso(tmp_path / "image.iso", label=label, boot=boot)

    info = inspect_iso(path)

    assert info == IsoInfo(volume_label=label, boot_type=boot, filesystems=("iso9660",), size=path.stat().st_size)


def test_inspect_reports_size_on_disk_including_padding(tmp_path: Path) -> None:
    plain = make_iso(tmp_path / "plain.iso")
    padded = make_iso(tmp_path / "padded.iso", size_padding=5 * SECTOR)

    assert inspect_iso(padded).size == inspect_iso(plain).size + 5 * SECTOR


def test_inspect_ignores_the_extension(tmp_path: Path) -> None:
    disguised = make_iso(tmp_path / "notes.txt", label="DISGUISED", boot="bios")

    assert inspect_iso(disguised).volume_label == "DISGUISED"
    assert is_iso_image(disguised)


def test_udf_only_image_is_an_image_without_label(tmp_path: Path) -> None:
    info = inspect_iso(make_udf_only_image(tmp_path))

    assert info.filesystems == ("udf",)
    assert info.volume_label == ""
    assert info.boot_type == "none"


def test_iso_udf_bridge_reports_both_filesystems(tmp_path: Path) -> None:
    info = inspect_iso(make_udf_bridge_iso(tmp_path, label="BRIDGE_LABEL"))

    assert info.filesystems == ("iso9660", "udf")
    assert info.volume_label == "BRIDGE_LABEL"


def test_damaged_boot_catalog_counts_as_not_bootable(tmp_path: Path) -> None:
    path = make_iso(tmp_path / "bios.iso", boot="bios")
    catalog_offset = _catalog_lba(path) * SECTOR
    with open(path, "r+b") as image:
        image.seek(catalog_offset + 30)
        image.write(b"\x00\x00")  # the 55 AA key of the validation entry

    info = inspect_iso(path)

    assert info.boot_type == "none"
    assert info.volume_label == "TESTISO"


def test_boot_record_pointing_past_the_end_counts_as_not_bootable(tmp_path: Path) -> None:
    path = make_iso(tmp_path / "bios.iso", boot="bios")
    boot_record = _boot_record_sector(path)
    with open(path, "r+b") as image:
        image.seek(boot_record * SECTOR + 0x47)
        image.write(struct.pack("<I", 0xFFFFFF))

    assert inspect_iso(path).boot_type == "none"


def _boot_record_sector(path: Path) -> int:
    data = path.read_bytes()
    for sector in range(16, 32):
        if data[sector * SECTOR : sector * SECTOR + 6] == b"\x00CD001":
            return sector
    raise AssertionError("no El Torito boot record")


def _catalog_lba(path: Path) -> int:
    data = path.read_bytes()
    (lba,) = struct.unpack_from("<I", data, _boot_record_sector(path) * SECTOR + 0x47)
    return int(lba)


def _catalog(validation_platform: int, initial_bootable: bool, sections: list[tuple[int, int, list[bytes]]]) -> bytes:
    """An El Torito catalog: validation entry with a correct checksum, initial entry, sections (header, platform, records)."""
    validation = bytearray(32)
    validation[0], validation[1] = 0x01, validation_platform
    validation[30:32] = b"\x55\xaa"
    checksum = (-sum(struct.unpack("<16H", bytes(validation)))) & 0xFFFF
    validation[28:30] = struct.pack("<H", checksum)
    records = [bytes(validation), bytes([0x88 if initial_bootable else 0x00]) + bytes(31)]
    for header, platform, entries in sections:
        count = sum(1 for entry in entries if entry[0] != 0x44)
        records.append(bytes([header, platform]) + struct.pack("<H", count) + bytes(28))
        records.extend(entries)
    return b"".join(records).ljust(SECTOR, b"\x00")


BOOT_ENTRY = b"\x88" + bytes(31)
NOT_BOOTABLE = b"\x00" + bytes(31)
EXTENSION = b"\x44" + bytes(31)


@pytest.mark.parametrize(
    ("catalog", "expected"),
    [
        (_catalog(0x00, True, []), "bios"),
        (_catalog(0xEF, True, []), "uefi"),
        (_catalog(0x00, True, [(0x91, 0xEF, [BOOT_ENTRY])]), "hybrid"),
        # extension records do not count as entries, so the EFI entry after one is still read
        (_catalog(0x00, False, [(0x90, 0x00, [NOT_BOOTABLE, EXTENSION]), (0x91, 0xEF, [BOOT_ENTRY])]), "uefi"),
        (_catalog(0x00, True, [(0x91, 0x02, [BOOT_ENTRY])]), "bios"),  # a Mac entry adds nothing
        (_catalog(0xEF, False, [(0x91, 0x00, [NOT_BOOTABLE])]), "none"),
        (_catalog(0x00, True, [(0x91, 0x00, [BOOT_ENTRY]), (0x91, 0xEF, [BOOT_ENTRY])]), "bios"),  # nothing after the last section
    ],
    ids=["bios-initial", "efi-initial", "bios-plus-efi-section", "extension-records", "mac-entry", "nothing-bootable", "after-last"],
)
def test_boot_type_follows_bootable_catalog_entries(catalog: bytes, expected: str) -> None:
    image = io.BytesIO(bytes(20 * SECTOR) + catalog)

    assert _boot_type(image, 20, len(image.getvalue())) == expected


def test_catalog_with_bad_checksum_is_not_bootable() -> None:
    catalog = bytearray(_catalog(0x00, True, []))
    catalog[4] ^= 0xFF

    assert _boot_type(io.BytesIO(bytes(catalog)), 0, len(catalog)) == "none"


# --- refusals ----------------------------------------------------------------------------------------


PASSWD = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" * 600


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello", "shorter than the 34816 bytes"),
        (bytes(17 * SECTOR - 1), "shorter than the 34816 bytes"),
        (bytes(64 * SECTOR), "no volume descriptor at sector 16"),
        (PASSWD, "no volume descriptor at sector 16"),
    ],
    ids=["short-text", "one-byte-short", "zeros", "passwd-like-text"],
)
def test_non_iso_content_is_refused_naming_the_field(tmp_path: Path, content: bytes, reason: str) -> None:
    path = make_non_iso(tmp_path, content)

    with pytest.raises(NotAnIsoImage) as caught:
        inspect_iso(path, field="url")

    assert caught.value.field == "url"
    assert caught.value.code == "not_iso_image"
    assert caught.value.status == 400
    assert str(path) in caught.value.message
    assert "is not an ISO 9660 or UDF image" in caught.value.message
    assert reason in caught.value.message
    assert not is_iso_image(path)


def test_qcow2_named_iso_is_refused(tmp_path: Path) -> None:
    assert shutil.which("qemu-img"), "qemu-img is part of the test set-up (qemu-utils)"
    path = tmp_path / "disk.iso"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)

    with pytest.raises(NotAnIsoImage, match="no volume descriptor at sector 16") as caught:
        inspect_iso(path)

    assert caught.value.field == "path"


def test_descriptor_set_without_primary_volume_descriptor_is_refused(tmp_path: Path) -> None:
    sectors = bytearray(32 * SECTOR)
    sectors[16 * SECTOR : 16 * SECTOR + 7] = b"\x02CD001\x01"  # a supplementary descriptor only
    sectors[17 * SECTOR : 17 * SECTOR + 7] = b"\xffCD001\x01"
    path = make_non_iso(tmp_path / "odd.iso", bytes(sectors))

    with pytest.raises(NotAnIsoImage, match="without a primary volume descriptor"):
        inspect_iso(path)


def test_udf_descriptors_outside_a_recognition_sequence_are_not_udf(tmp_path: Path) -> None:
    sectors = bytearray(32 * SECTOR)
    sectors[16 * SECTOR : 16 * SECTOR + 7] = b"\x00NSR02\x01"  # no BEA01 before it
    path = make_non_iso(tmp_path / "nsr.iso", bytes(sectors))

    assert not is_iso_image(path)


def test_directory_and_missing_file_are_not_images(tmp_path: Path) -> None:
    with pytest.raises(NotAnIsoImage, match="cannot be read"):
        inspect_iso(tmp_path)
    assert not is_iso_image(tmp_path / "missing.iso")


# --- OS guess -----------------------------------------------------------------------------------------


# Evaluation media name the build number, not the year.
SERVER_2022_EVAL = "20348.169.210806-2348.fe_release_svc_refresh_SERVER_EVAL_x64FRE_en-us.iso"


@pytest.mark.parametrize(
    ("label", "filename", "expected"),
    [
        ("Ubuntu-Server 22.04 LTS amd64", "", OsGuess("linux", "ubuntu22.04", "x86_64")),
        ("Ubuntu 24.04 LTS amd64", "", OsGuess("linux", "ubuntu24.04", "x86_64")),
        ("", "ubuntu-22.04.3-live-server-arm64.iso", OsGuess("linux", "ubuntu22.04", "aarch64")),
        ("Debian 12.5.0 amd64 n", "", OsGuess("linux", "debian12", "x86_64")),
        ("Debian 12.5.0 i386 n", "", OsGuess("linux", "debian12", "i686")),
        ("Fedora-S-dvd-x86_64-39", "", OsGuess("linux", "fedora39", "x86_64")),
        ("Rocky-9-3-x86_64-dvd", "", OsGuess("linux", "rocky9", "x86_64")),
        ("AlmaLinux-9-3-x86_64-dvd", "", OsGuess("linux", "almalinux9", "x86_64")),
        ("CentOS-Stream-9-BaseOS-x86_64", "", OsGuess("linux", "centos-stream9", "x86_64")),
        ("openSUSE-Leap-15.5-DVD-x86_64", "", OsGuess("linux", "opensuse15.5", "x86_64")),
        ("alpine-virt 3.17.0 x86_64", "", OsGuess("linux", "alpinelinux3.17", "x86_64")),
        ("ARCH_202401", "", OsGuess("linux", "archlinux", "")),
        ("CCCOMA_X64FRE_EN-US_DV9", "", OsGuess("windows", "", "x86_64")),
        ("CCCOMA_X64FRE_EN-US_DV9", "Win11_23H2_English_x64.iso", OsGuess("windows", "win11", "x86_64")),
        ("CCCOMA_X64FRE_EN-US_DV9", "Win10_22H2_English_x64v1.iso", OsGuess("windows", "win10", "x86_64")),
        ("CPBA_A64FRE_EN-US_DV9", "", OsGuess("windows", "", "aarch64")),
        ("SSS_X64FREE_EN-US_DV9", SERVER_2022_EVAL, OsGuess("windows", "win2k22", "x86_64")),
        ("14_0_RELEASE_AMD64_CD", "", OsGuess("bsd", "freebsd14.0", "x86_64")),
        ("", "FreeBSD-14.0-RELEASE-amd64-disc1.iso", OsGuess("bsd", "freebsd14.0", "x86_64")),
        ("TESTISO", "", OsGuess("", "", "")),
        ("TESTISO", "random-download.iso", OsGuess("", "", "")),
        # the label decides the OS; a file name naming another OS does not override it
        ("Ubuntu-Server 22.04 LTS amd64", "Win11_23H2_English_x64.iso", OsGuess("linux", "ubuntu22.04", "x86_64")),
        # a version osinfo does not know leaves the variant empty but keeps the OS type
        ("Fedora-S-dvd-x86_64-99", "", OsGuess("linux", "", "x86_64")),
        ("Linux Mint 21.2 Cinnamon 64-bit", "", OsGuess("linux", "", "")),
    ],
)
def test_guess_os_from_label_then_filename(fake_osinfo: Path, label: str, filename: str, expected: OsGuess) -> None:
    assert guess_os(label, filename, osinfo_dir=fake_osinfo) == expected


def test_guess_os_only_proposes_variants_osinfo_knows(tmp_path: Path) -> None:
    without_noble = make_osinfo_db(tmp_path, tuple(entry for entry in STANDARD_OSES if "ubuntu24.04" not in entry[0]))

    assert guess_os("Ubuntu 24.04 LTS amd64", osinfo_dir=without_noble) == OsGuess("linux", "", "x86_64")


def test_guess_os_without_osinfo_db_still_gives_type_and_architecture(tmp_path: Path) -> None:
    assert guess_os("Ubuntu-Server 22.04 LTS amd64", osinfo_dir=tmp_path / "absent") == OsGuess("linux", "", "x86_64")


@pytest.mark.parametrize(
    ("label", "filename", "variant"),
    [
        ("Ubuntu-Server 22.04 LTS amd64", "", "ubuntu22.04"),
        ("Rocky-9-3-x86_64-dvd", "", "rocky9"),
        ("alpine-virt 3.17.0 x86_64", "", "alpinelinux3.17"),
        ("ARCH_202401", "", "archlinux"),
        ("CCCOMA_X64FRE_EN-US_DV9", "Win11_23H2_English_x64.iso", "win11"),
    ],
)
def test_guess_os_against_installed_osinfo_db(label: str, filename: str, variant: str) -> None:
    """The installed package (Debian 12's osinfo-db) knows these; guesses are checked against it, not only the fake."""
    from guestos import osinfo

    assert guess_os(label, filename, osinfo_dir=REAL_OSINFO).os_variant == variant
    assert osinfo.validate_os_variant(variant, directory=REAL_OSINFO) == variant
