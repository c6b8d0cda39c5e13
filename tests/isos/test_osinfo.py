"""osinfo-db lookups: the installed database (Debian's osinfo-db package) and miniature ones written per test."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from guestos import osinfo
from tests.support.isos import STANDARD_OSES, make_osinfo_db
from vaporsite.errors import InvalidInput

REAL_OSINFO = Path("/usr/share/osinfo")


def test_installed_database_knows_common_variants() -> None:
    ids = osinfo.short_ids(REAL_OSINFO)

    assert {"ubuntu22.04", "win11", "win10", "rocky9", "alpinelinux3.17", "archlinux"} <= ids
    assert len(ids) > 500
    assert osinfo.is_known("ubuntu22.04", REAL_OSINFO)
    assert osinfo.is_known("win11", REAL_OSINFO)
    assert not osinfo.is_known("ubuntu22", REAL_OSINFO)
    assert not osinfo.is_known("", REAL_OSINFO)


def test_unknown_variant_is_refused_with_close_matches() -> None:
    with pytest.raises(InvalidInput) as caught:
        osinfo.validate_os_variant("ubuntu22", directory=REAL_OSINFO)

    error = caught.value
    assert error.status == 400
    assert error.field == "os_variant"
    assert error.code == "unknown_os_variant"
    assert error.message == "'ubuntu22' is not an osinfo-db short id; did you mean ubuntu22.04, ubuntu22.10?"
    assert error.as_dict()["suggestions"] == ["ubuntu22.04", "ubuntu22.10"]


def test_misspelt_variant_gets_difflib_suggestions(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path)

    with pytest.raises(InvalidInput, match=r"did you mean win11\b") as caught:
        osinfo.validate_os_variant("wni11", field="secondary.os_variant", directory=db)

    assert caught.value.field == "secondary.os_variant"


def test_wrong_case_suggests_the_real_spelling(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path)

    with pytest.raises(InvalidInput, match=r"did you mean ubuntu22\.04\?"):
        osinfo.validate_os_variant("Ubuntu22.04", directory=db)


def test_variant_far_from_everything_names_where_ids_come_from(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path)

    with pytest.raises(InvalidInput) as caught:
        osinfo.validate_os_variant("zzzzqqqq", directory=db)

    assert "did you mean" not in caught.value.message
    assert str(db / "os") in caught.value.message
    assert caught.value.as_dict()["suggestions"] == []


def test_known_and_empty_variants_pass_unchanged(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path)

    assert osinfo.validate_os_variant("debian12", directory=db) == "debian12"
    assert osinfo.validate_os_variant("debianbookworm", directory=db) == "debianbookworm"
    assert osinfo.validate_os_variant("", directory=db) == ""


def test_missing_database_is_an_error_not_a_pass(tmp_path: Path) -> None:
    absent = tmp_path / "no-osinfo"

    with pytest.raises(InvalidInput) as caught:
        osinfo.validate_os_variant("ubuntu22.04", directory=absent)

    assert caught.value.code == "osinfo_db_missing"
    assert caught.value.field == "os_variant"
    assert "osinfo-db is not installed" in caught.value.message
    assert not osinfo.is_installed(absent)
    assert osinfo.short_ids(absent) == frozenset()
    assert not osinfo.is_known("ubuntu22.04", absent)
    assert osinfo.validate_os_variant("", directory=absent) == ""


def test_database_installed_after_a_miss_is_seen(tmp_path: Path) -> None:
    assert not osinfo.is_known("win11", tmp_path)

    make_osinfo_db(tmp_path)

    assert osinfo.is_known("win11", tmp_path)


def test_upgraded_database_is_reloaded(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path, STANDARD_OSES[:1])
    assert not osinfo.is_known("win11", db)
    stamp = (db / "VERSION").stat().st_mtime_ns

    make_osinfo_db(tmp_path, STANDARD_OSES)
    os.utime(db / "VERSION", ns=(stamp + 1_000_000_000, stamp + 1_000_000_000))

    assert osinfo.is_known("win11", db)


def test_unparsable_file_does_not_hide_the_others(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path)
    (db / "os" / "broken.example").mkdir()
    (db / "os" / "broken.example" / "broken.xml").write_text("<libosinfo><os id='x'><short-id>broken1")

    assert osinfo.is_known("ubuntu22.04", db)
    assert not osinfo.is_known("broken1", db)


def test_files_outside_vendor_directories_are_not_read(tmp_path: Path) -> None:
    """Only os/<vendor>/<name>.xml are OS entries; win-10.d/ style subdirectories hold driver lists."""
    db = make_osinfo_db(tmp_path, STANDARD_OSES[:1])
    drivers = db / "os" / "microsoft.com" / "win-10.d"
    drivers.mkdir(parents=True)
    (drivers / "drivers.xml").write_text("<libosinfo><os id='http://microsoft.com/win/10'><short-id>win10</short-id></os></libosinfo>")

    assert not osinfo.is_known("win10", db)


@pytest.mark.parametrize(
    ("short_id", "os_type"),
    [
        ("ubuntu22.04", "linux"),
        ("rocky9", "linux"),
        ("alpinelinux3.17", "linux"),
        ("win11", "windows"),
        ("win2k22", "windows"),
        ("winxp", "windows"),
        ("win95", "windows"),
        ("freebsd13.1", "bsd"),
        ("openbsd7.0", "bsd"),
        ("netbsd9.0", "bsd"),
        ("msdos6.22", "other"),
        ("haikur1alpha1", "other"),
        ("no-such-os", ""),
    ],
)
def test_os_type_for_installed_database(short_id: str, os_type: str) -> None:
    assert osinfo.os_type_for(short_id, REAL_OSINFO) == os_type


def test_os_type_for_miniature_database(tmp_path: Path) -> None:
    db = make_osinfo_db(tmp_path)

    assert osinfo.os_type_for("debian12", db) == "linux"
    assert osinfo.os_type_for("win11", db) == "windows"
    assert osinfo.os_type_for("freebsd14.0", db) == "bsd"
    assert osinfo.os_type_for("haiku-r1beta4", db) == "other"
    assert osinfo.os_type_for("win11", tmp_path / "absent") == ""


def test_directory_comes_from_settings_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from django.conf import settings

    db = make_osinfo_db(tmp_path, (((("vaporos1",), "http://example.org/vaporos/1", "linux", "vaporos")),))
    monkeypatch.setattr(settings, "VAPOR", replace(settings.VAPOR, osinfo_dir=db))

    assert osinfo.is_known("vaporos1")
    assert osinfo.os_type_for("vaporos1") == "linux"
    assert osinfo.validate_os_variant("vaporos1") == "vaporos1"
    with pytest.raises(InvalidInput, match="did you mean vaporos1"):
        osinfo.validate_os_variant("vaporos")

    monkeypatch.setattr(settings, "VAPOR", replace(settings.VAPOR, osinfo_dir=tmp_path / "gone"))

    with pytest.raises(InvalidInput, match="osinfo-db is not installed"):
        osinfo.validate_os_variant("vaporos1")
